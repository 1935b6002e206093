package admin

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/pgshield/pgshield/policy"
)

// The policy as the operator sees it: SHOW POLICY, SHOW FIREWALL and
// FIREWALL SAVE.

// AllowLists writes the allow lists of FIREWALL SAVE. cmd/pgshield, which
// reads them when it loads the policy and so knows their format,
// implements it on the Settings it gives NewLive; a Live whose Settings
// does not cannot save.
type AllowLists interface {
	// SaveAllowList adds fps to the allow list of service at path (the
	// firewall's allow_file, as the loader resolved it) and returns how
	// many fingerprints the file lists now.
	SaveAllowList(path, service string, fps []policy.FingerprintInfo) (total int, err error)
}

// Policy lists the rules in force with their counts.
func (l *Live) Policy() []PolicyRow {
	p := l.srv.Policy()
	if p == nil {
		return nil
	}
	checks, refusals := l.srv.PolicyStats()
	rules := p.Rules()
	out := make([]PolicyRow, 0, len(rules))
	for _, r := range rules {
		out = append(out, PolicyRow{Database: r.Database, Table: r.Table, Column: r.Column, Rule: r.Rule, Kind: r.Kind,
			Services: r.Services, Checks: checks[[2]string{r.Database, r.Table}],
			Refusals: refusals[[3]string{r.Database, r.Table, r.Rule}]})
	}
	return out
}

// Firewall lists each service's fingerprints, or the service alone.
func (l *Live) Firewall() []FirewallRow {
	fw := l.srv.Policy().Firewall()
	var out []FirewallRow
	for _, s := range fw.Services() {
		fps := fw.Fingerprints(s.Service)
		if len(fps) == 0 {
			out = append(out, FirewallRow{Service: s.Service, Mode: s.Mode, Rules: s.Deny})
			continue
		}
		for _, fp := range fps {
			source := "learned"
			if fp.Allowed {
				source = "allowed"
			}
			out = append(out, FirewallRow{Service: s.Service, Mode: s.Mode, Fingerprint: fp.Fingerprint, Source: source,
				Query: fp.Query, Rules: s.Deny})
		}
	}
	return out
}

// FirewallSave writes the learned fingerprints of service ("": of every
// service in mode learn) to its allow_file. Every service is checked
// before any file is written.
func (l *Live) FirewallSave(service string) ([]SavedAllowList, error) {
	p := l.srv.Policy()
	if p == nil {
		return nil, &Error{Code: CodeObjectNotInPrerequisiteState, Message: "FIREWALL SAVE: no policy is in force",
			Hint: "name a policy file with a firewall in the configuration (policy_file) and RELOAD"}
	}
	fw := p.Firewall()
	services := fw.Services()
	var chosen []policy.FirewallInfo
	if service != "" {
		i := slices.IndexFunc(services, func(s policy.FirewallInfo) bool { return s.Service == service })
		if i < 0 {
			if _, configured := l.pools.Config().Services[service]; !configured {
				return nil, &Error{Code: CodeInvalidParameterValue, Message: fmt.Sprintf("FIREWALL SAVE: unknown service %q", service),
					Hint: firewallServicesHint(services)}
			}
			return nil, &Error{Code: CodeObjectNotInPrerequisiteState,
				Message: fmt.Sprintf("FIREWALL SAVE: service %s has no firewall rules, so it learns nothing", service),
				Hint:    fmt.Sprintf("set firewall.%s.mode: learn and allow_file in the policy file and RELOAD", service)}
		}
		if services[i].Mode != policy.FirewallLearn {
			return nil, &Error{Code: CodeObjectNotInPrerequisiteState,
				Message: fmt.Sprintf("FIREWALL SAVE: the firewall of service %s is in mode %s, not learn", service, services[i].Mode),
				Hint:    fmt.Sprintf("set firewall.%s.mode: learn in the policy file and RELOAD, let the application run, then FIREWALL SAVE %s", service, service)}
		}
		chosen = services[i : i+1]
	} else {
		for _, s := range services {
			if s.Mode == policy.FirewallLearn {
				chosen = append(chosen, s)
			}
		}
		if len(chosen) == 0 {
			return nil, &Error{Code: CodeObjectNotInPrerequisiteState, Message: "FIREWALL SAVE: no service's firewall is in mode learn",
				Hint: "set firewall.<service>.mode: learn in the policy file and RELOAD, let the application run, then FIREWALL SAVE"}
		}
	}
	for _, s := range chosen {
		if s.AllowFile == "" {
			return nil, &Error{Code: CodeObjectNotInPrerequisiteState,
				Message: fmt.Sprintf("FIREWALL SAVE: firewall.%s has no allow_file to write", s.Service),
				Hint:    fmt.Sprintf("set firewall.%s.allow_file (relative to the policy file) and RELOAD; the fingerprints are learned again from then", s.Service)}
		}
	}
	w, _ := l.settings.(AllowLists)
	if w == nil {
		return nil, &Error{Code: CodeObjectNotInPrerequisiteState, Message: "FIREWALL SAVE: this pgshield cannot write allow lists"}
	}
	var out []SavedAllowList
	for _, s := range chosen {
		var learned []policy.FingerprintInfo
		for _, fp := range fw.Fingerprints(s.Service) {
			if fp.Learned {
				learned = append(learned, fp)
			}
		}
		total, err := w.SaveAllowList(s.AllowFile, s.Service, learned)
		if err != nil {
			return out, &Error{Code: CodeObjectNotInPrerequisiteState, Err: err,
				Message: fmt.Sprintf("FIREWALL SAVE of service %s failed: %v", s.Service, err)}
		}
		out = append(out, SavedAllowList{Service: s.Service, Path: s.AllowFile, Learned: len(learned), Total: total})
	}
	return out, nil
}

func firewallServicesHint(services []policy.FirewallInfo) string {
	if len(services) == 0 {
		return "the policy has no firewall rules"
	}
	names := make([]string, len(services))
	for i, s := range services {
		names[i] = s.Service
	}
	return "services with firewall rules: " + strings.Join(names, ", ")
}

// policyRules is SHOW POLICY.
func (c *Console) policyRules() *Result {
	res := &Result{Columns: Cols(
		"database", TypeText, "table", TypeText, "column", TypeText, "rule", TypeText, "kind", TypeText,
		"services", TypeText, "checks", TypeInt8, "refusals", TypeInt8,
	)}
	for _, r := range c.src.Policy() {
		res.Rows = append(res.Rows, []any{r.Database, r.Table, r.Column, r.Rule, r.Kind, r.Services, r.Checks, r.Refusals})
	}
	return res
}

// firewallRows is SHOW FIREWALL.
func (c *Console) firewallRows() *Result {
	res := &Result{Columns: Cols(
		"service", TypeText, "mode", TypeText, "fingerprint", TypeText, "source", TypeText, "query", TypeText,
		"rules", TypeText,
	)}
	for _, r := range c.src.Firewall() {
		res.Rows = append(res.Rows, []any{r.Service, r.Mode, nullIf(r.Fingerprint), nullIf(r.Source), nullIf(r.Query), nullIf(r.Rules)})
	}
	return res
}

// firewallSave runs FIREWALL SAVE [service].
func (c *Console) firewallSave(_ context.Context, args []token) (*answer, error) {
	service := ""
	if len(args) == 2 {
		service = args[1].text
	}
	saved, err := c.src.FirewallSave(service)
	if err != nil {
		return nil, sourceError("FIREWALL SAVE", err)
	}
	ans := &answer{res: &Result{}, tag: "FIREWALL SAVE"}
	for _, s := range saved {
		ans.notices = append(ans.notices, fmt.Sprintf(
			"service %s: %s written to %s (%d learned); to allow only these, set firewall.%s.mode: enforce in the policy file and RELOAD",
			s.Service, plural(s.Total, "fingerprint"), s.Path, s.Learned, s.Service))
	}
	return ans, nil
}

// firewallArgs is the rule of FIREWALL SAVE [service].
func firewallArgs(cmd string, args []token) error {
	switch {
	case len(args) == 0 || args[0].quoted || !strings.EqualFold(args[0].text, "SAVE"):
		return Errorf(CodeSyntaxError, "%s needs SAVE: FIREWALL SAVE [service]", cmd).
			withHint("without a service it saves every service in mode learn; SHOW FIREWALL lists them")
	case len(args) > 2:
		return Errorf(CodeSyntaxError, "FIREWALL SAVE takes at most one service, got %d arguments", len(args)-1)
	case len(args) == 2 && (args[1].isEq() || args[1].text == ""):
		return Errorf(CodeSyntaxError, "FIREWALL SAVE needs a service name or nothing")
	}
	return nil
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
