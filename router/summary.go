package router

import (
	"fmt"
	"strings"
)

// Summary renders a Class in one line, for golden tests and logs (it holds
// no literal values except in SET statements' names).
func Summary(c *Class) string {
	if c.SyntaxError != "" {
		return "syntax-error"
	}
	var parts []string
	if c.ReadOnly {
		parts = append(parts, "read")
	} else {
		parts = append(parts, "write")
	}
	if c.Pins != 0 {
		parts = append(parts, "pin("+c.Pins.String()+")")
	}
	for _, e := range c.Effects {
		switch e.Kind {
		case EffectSet:
			parts = append(parts, "set("+e.Name+")")
		case EffectReset:
			parts = append(parts, "reset("+e.Name+")")
		case EffectResetAll:
			parts = append(parts, "reset-all")
		case EffectUnpin:
			parts = append(parts, "unpin("+e.Unpin.String()+")")
		case EffectDiscardAll:
			parts = append(parts, "discard-all")
		case EffectDeallocateAll:
			parts = append(parts, "deallocate-all")
		default:
			parts = append(parts, fmt.Sprint(e.Kind))
		}
	}
	return strings.Join(parts, " ")
}
