package config

import (
	"fmt"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// The schema walk reads the YAML node tree alongside the Go types the file
// decodes into. The decoder's own messages name Go types and stop at the
// first structural problem; the walk instead names keys the way the user
// wrote them, reports every problem, and remembers which keys are present
// (with their lines), which the decoded values alone cannot tell.

// problem is one mistake in the file.
type problem struct {
	path string // as written: pool.wait_timeout, users[1].name; "" for the whole file
	line int
	msg  string
}

func (p *problem) Error() string {
	if p.path == "" {
		return fmt.Sprintf("line %d: %s", p.line, p.msg)
	}
	return fmt.Sprintf("%s (line %d): %s", p.path, p.line, p.msg)
}

type stepKind int

const (
	stepField   stepKind = iota // a struct field, by its index path
	stepEntry                   // a map entry, by its key
	stepElement                 // a slice element, by its index
)

// step is one move from a value to a value inside it; a list of them finds
// the same key again in the decoded File.
type step struct {
	kind  stepKind
	field []int
	key   string
	index int
}

// place is where in the file (and in File) a value sits.
type place struct {
	path    string   // services.analytics.min_connections
	pattern string   // services.*.min_connections: map keys as *, list indexes as []
	name    string   // the nearest key, which decides whether the value is a secret
	keys    []string // the map keys passed on the way, in order
	steps   []step
}

func (p place) field(name string, index []int) place {
	return place{
		path:    joinPath(p.path, name),
		pattern: joinPath(p.pattern, name),
		name:    name,
		keys:    p.keys,
		steps:   append(slices.Clip(p.steps), step{kind: stepField, field: index}),
	}
}

func (p place) entry(key string) place {
	return place{
		path:    joinPath(p.path, key),
		pattern: joinPath(p.pattern, "*"),
		name:    key,
		keys:    append(slices.Clip(p.keys), key),
		steps:   append(slices.Clip(p.steps), step{kind: stepEntry, key: key}),
	}
}

func (p place) element(i int) place {
	return place{
		path:    fmt.Sprintf("%s[%d]", p.path, i),
		pattern: p.pattern + "[]",
		name:    p.name,
		keys:    p.keys,
		steps:   append(slices.Clip(p.steps), step{kind: stepElement, index: i}),
	}
}

func joinPath(parent, key string) string {
	if parent == "" {
		return key
	}
	return parent + "." + key
}

// leaf is a scalar given in the file with a non-null value.
type leaf struct {
	place
	line int
}

// lookup finds the leaf's value in v (a File), or the invalid Value when a
// map entry or list element is not there.
func (l leaf) lookup(v reflect.Value) reflect.Value {
	for _, s := range l.steps {
		for v.Kind() == reflect.Pointer || v.Kind() == reflect.Interface {
			if v.IsNil() {
				return reflect.Value{}
			}
			v = v.Elem()
		}
		switch s.kind {
		case stepField:
			v = v.FieldByIndex(s.field)
		case stepEntry:
			v = v.MapIndex(reflect.ValueOf(s.key).Convert(v.Type().Key()))
		case stepElement:
			if s.index >= v.Len() {
				return reflect.Value{}
			}
			v = v.Index(s.index)
		}
		if !v.IsValid() {
			return reflect.Value{}
		}
	}
	return v
}

// walker collects what one walk over the node tree found.
type walker struct {
	problems []error
	leaves   []leaf
	lines    map[string]int // key path (and list element) → line where it is given
}

func newWalker() *walker {
	return &walker{lines: make(map[string]int)}
}

func (w *walker) add(path string, line int, format string, args ...any) {
	w.problems = append(w.problems, &problem{path: path, line: line, msg: fmt.Sprintf(format, args...)})
}

func (w *walker) seen(path string, line int) {
	if _, ok := w.lines[path]; !ok {
		w.lines[path] = line
	}
}

// isDuration: time.Duration is an int64 to reflect, but written as 30s.
func isDuration(t reflect.Type) bool { return t == reflect.TypeFor[time.Duration]() }

// value checks n against t.
func (w *walker) value(n *yaml.Node, t reflect.Type, at place) {
	n = resolve(n)
	if n == nil || isNull(n) {
		// The decoder leaves the field as it was: the same as leaving the
		// key out.
		return
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case isDuration(t):
		w.scalar(n, t, at, "a duration such as 30s")
	case t.Kind() == reflect.Struct:
		if n.Kind != yaml.MappingNode {
			w.want(n, at, "a mapping of keys")
			return
		}
		w.structure(n, t, at)
	case t.Kind() == reflect.Map:
		w.entries(n, t, at)
	case t.Kind() == reflect.Slice || t.Kind() == reflect.Array:
		if n.Kind != yaml.SequenceNode {
			w.want(n, at, "a list")
			return
		}
		for i, e := range n.Content {
			el := at.element(i)
			w.seen(el.path, e.Line)
			w.value(e, t.Elem(), el)
		}
	case t.Kind() == reflect.Interface:
		// Anything decodes into an interface.
	default:
		w.scalar(n, t, at, expectation(t))
	}
}

func expectation(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "a whole number"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return "a whole number, not negative"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	}
	return "a value of type " + t.String()
}

// scalar lets the decoder itself judge the value, so that what passes here
// is exactly what the real decode accepts.
func (w *walker) scalar(n *yaml.Node, t reflect.Type, at place, want string) {
	if n.Kind != yaml.ScalarNode {
		w.want(n, at, want)
		return
	}
	if err := n.Decode(reflect.New(t).Interface()); err != nil || truncated(n, t) {
		hint := ""
		if _, err := strconv.ParseFloat(n.Value, 64); err == nil && isDuration(t) && !isSecret(at.name) {
			hint = fmt.Sprintf(" (a duration needs a unit: %ss)", n.Value)
		}
		w.add(at.path, n.Line, "want %s, got %s%s", want, describe(n, isSecret(at.name)), hint)
		return
	}
	w.leaves = append(w.leaves, leaf{place: at, line: n.Line})
}

// truncated: the decoder puts 2.5 into an int as 2, which is never what
// the user meant.
func truncated(n *yaml.Node, t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
	default:
		return false
	}
	if n.ShortTag() != "!!float" {
		return false
	}
	f, err := strconv.ParseFloat(n.Value, 64)
	return err != nil || f != math.Trunc(f)
}

// want reports that n is not what the key takes.
func (w *walker) want(n *yaml.Node, at place, want string) {
	w.add(at.path, n.Line, "want %s, got %s", want, describe(n, isSecret(at.name)))
}

// describe says what n is; a secret's value is never shown.
func describe(n *yaml.Node, secret bool) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	if secret {
		return "a value that does not fit (not shown, as the key looks secret)"
	}
	v := n.Value
	if r := []rune(v); len(r) > 40 {
		v = string(r[:40]) + "…"
	}
	return strconv.Quote(v)
}

// isSecret: values of these keys must not end up in logs by way of an
// error message.
func isSecret(key string) bool {
	k := strings.ToLower(key)
	for _, s := range []string{"password", "passwd", "secret", "token", "key"} {
		if strings.Contains(k, s) {
			return true
		}
	}
	return false
}

// structure checks the keys of a mapping that decodes into struct type t.
func (w *walker) structure(n *yaml.Node, t reflect.Type, at place) {
	fs := fieldsOf(t)
	w.pairs(n, at, func(key string, k, v *yaml.Node) {
		f, ok := fs.byName[key]
		if !ok {
			path := joinPath(at.path, key)
			if hint := suggest(key, fs.candidates()); hint != "" {
				w.add(path, k.Line, "unknown key; did you mean %s?", hint)
			} else {
				w.add(path, k.Line, "unknown key")
			}
			return
		}
		child := at.field(key, f.index)
		w.seen(child.path, k.Line)
		w.value(v, f.typ, child)
	})
}

// entries checks a mapping that decodes into map type t: its keys are
// names the user chose, so only its values can be wrong.
func (w *walker) entries(n *yaml.Node, t reflect.Type, at place) {
	if t.Key().Kind() != reflect.String {
		if err := n.Decode(reflect.New(t).Interface()); err != nil {
			w.want(n, at, "a mapping")
		}
		return
	}
	elem := t.Elem()
	for elem.Kind() == reflect.Pointer {
		elem = elem.Elem()
	}
	if n.Kind != yaml.MappingNode {
		if elem.Kind() == reflect.Struct {
			w.want(n, at, "a mapping of names to their settings")
		} else {
			w.want(n, at, "a mapping")
		}
		return
	}
	w.pairs(n, at, func(key string, k, v *yaml.Node) {
		child := at.entry(key)
		w.seen(child.path, k.Line)
		if rv := resolve(v); elem.Kind() != reflect.Struct || rv == nil || isNull(rv) || rv.Kind == yaml.MappingNode {
			w.value(v, t.Elem(), child)
			return
		}
		// A setting written directly under the map, one level too high.
		if _, ok := fieldsOf(elem).byName[key]; ok {
			w.add(child.path, k.Line, "want the settings of an entry named %q, got %s; %s is set per entry: %s.<name>.%s",
				key, describe(resolve(v), isSecret(key)), key, at.path, key)
			return
		}
		w.value(v, t.Elem(), child)
	})
}

// pairs calls fn for each key of mapping n, merges (<<) included as the
// decoder applies them, and reports keys that are not plain names or are
// given twice.
func (w *walker) pairs(n *yaml.Node, at place, fn func(key string, k, v *yaml.Node)) {
	type pair struct {
		k, v   *yaml.Node
		merged bool
	}
	var all, merges []pair
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if isMerge(k) {
			merges = append(merges, pair{k: k, v: v})
			continue
		}
		all = append(all, pair{k: k, v: v})
	}
	for _, m := range merges {
		v := resolve(m.v)
		var sources []*yaml.Node
		if v != nil && v.Kind == yaml.SequenceNode {
			for _, e := range v.Content {
				sources = append(sources, resolve(e))
			}
		} else {
			sources = append(sources, v)
		}
		for _, s := range sources {
			if s == nil || s.Kind != yaml.MappingNode {
				w.add(joinPath(at.path, "<<"), m.k.Line, "a merge takes a mapping or a list of mappings, such as *defaults")
				continue
			}
			for i := 0; i+1 < len(s.Content); i += 2 {
				all = append(all, pair{k: s.Content[i], v: s.Content[i+1], merged: true})
			}
		}
	}
	first := make(map[string]int)
	for _, p := range all {
		k := resolve(p.k)
		if k == nil || k.Kind != yaml.ScalarNode {
			w.add(at.path, p.k.Line, "a key must be a plain name, got %s", describe(p.k, false))
			continue
		}
		key := k.Value
		if isNull(k) {
			key = ""
		}
		if line, dup := first[key]; dup {
			// A key given here overrides the same key from a merge; only a
			// key written twice in the same mapping is a mistake.
			if !p.merged {
				w.add(joinPath(at.path, key), p.k.Line, "given twice (first at line %d)", line)
			}
			continue
		}
		first[key] = p.k.Line
		fn(key, p.k, p.v)
	}
}

func isMerge(k *yaml.Node) bool {
	return k.Kind == yaml.ScalarNode && k.Value == "<<" && (k.Tag == "" || k.Tag == "!" || k.ShortTag() == "!!merge")
}

// resolve follows aliases to the node they name.
func resolve(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// fieldSpec is one key a struct takes.
type fieldSpec struct {
	index []int
	typ   reflect.Type
}

// fieldSet is the keys of a struct as the decoder sees them: yaml tags,
// inline structs flattened into their parent, "-" left out.
type fieldSet struct {
	names  []string
	byName map[string]fieldSpec
}

func fieldsOf(t reflect.Type) fieldSet {
	fs := fieldSet{byName: make(map[string]fieldSpec)}
	var add func(t reflect.Type, prefix []int)
	add = func(t reflect.Type, prefix []int) {
		for i := range t.NumField() {
			sf := t.Field(i)
			if sf.PkgPath != "" && !sf.Anonymous {
				continue
			}
			tag := sf.Tag.Get("yaml")
			if tag == "-" {
				continue
			}
			name, opts, _ := strings.Cut(tag, ",")
			index := append(slices.Clip(prefix), i)
			if slices.Contains(strings.Split(opts, ","), "inline") && sf.Type.Kind() == reflect.Struct {
				add(sf.Type, index)
				continue
			}
			if name == "" {
				name = strings.ToLower(sf.Name)
			}
			if _, dup := fs.byName[name]; dup {
				continue
			}
			fs.names = append(fs.names, name)
			fs.byName[name] = fieldSpec{index: index, typ: sf.Type}
		}
	}
	add(t, nil)
	return fs
}

// candidates are the keys an unknown key may have been meant as: the keys
// of this level, then those one section further down (written as
// pool.wait_timeout), for a key put at the wrong level.
func (fs fieldSet) candidates() []string {
	c := slices.Clone(fs.names)
	for _, name := range fs.names {
		t := fs.byName[name].typ
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct {
			continue
		}
		for _, sub := range fieldsOf(t).names {
			c = append(c, name+"."+sub)
		}
	}
	return c
}

// suggest returns the candidate nearest to key, if it is near enough to be
// a likely typo; a dotted candidate is compared by its last part. Earlier
// candidates win ties.
func suggest(key string, candidates []string) string {
	k := strings.ToLower(key)
	limit := min(3, 1+len([]rune(k))/5)
	best, bestDist := "", limit+1
	for _, c := range candidates {
		last := c[strings.LastIndex(c, ".")+1:]
		if d := editDistance(k, last); d < bestDist {
			best, bestDist = c, d
		}
	}
	return best
}

// editDistance counts the insertions, deletions, substitutions and swaps of
// neighbouring characters that turn a into b (optimal string alignment).
func editDistance(a, b string) int {
	s, t := []rune(a), []rune(b)
	before := make([]int, len(t)+1) // row i-2
	prev := make([]int, len(t)+1)   // row i-1
	cur := make([]int, len(t)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(s); i++ {
		cur[0] = i
		for j := 1; j <= len(t); j++ {
			cost := 1
			if s[i-1] == t[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && s[i-1] == t[j-2] && s[i-2] == t[j-1] {
				cur[j] = min(cur[j], before[j-2]+1)
			}
		}
		before, prev, cur = prev, cur, before
	}
	return prev[len(t)]
}

// withLines appends to each error of err (a tree of joined errors, as the
// packages' Validate return) the line of the key its message starts with,
// or of the nearest enclosing key that is in the file.
func (w *walker) withLines(err error) []error {
	var out []error
	for _, e := range flatten(err) {
		subject, _, _ := strings.Cut(e.Error(), " ")
		subject = strings.TrimRight(subject, ":")
		for subject != "" {
			if line, ok := w.lines[subject]; ok {
				e = fmt.Errorf("%w (line %d)", e, line)
				break
			}
			cut := max(strings.LastIndexByte(subject, '.'), strings.LastIndexByte(subject, '['))
			if cut < 0 {
				break
			}
			subject = subject[:cut]
		}
		out = append(out, e)
	}
	return out
}

func flatten(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flatten(e)...)
		}
		return out
	}
	return []error{err}
}
