package policy

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"
)

// FirewallRules are the firewall rules of one service: the policy file's
// `firewall: {<service>: FirewallRules}`. The deny rules apply in every
// mode; Mode and Allow are the allow-list of statement fingerprints.
type FirewallRules struct {
	// DenyKinds refuses statements by kind (Statement.Kind, listed by
	// Kinds), case-insensitive. An entry matches the kind itself and every
	// longer kind it starts, word by word: DROP matches DROP TABLE and
	// DROP ROLE, not DROPX. Besides kinds and their leading words:
	//   - ROLE is role DDL and membership: CREATE ROLE, ALTER ROLE,
	//     DROP ROLE, GRANT ROLE, REVOKE ROLE (USER and GROUP are read as
	//     ROLE: CREATE USER is CREATE ROLE);
	//   - COPY PROGRAM is COPY … FROM/TO PROGRAM (COPY refuses every COPY).
	DenyKinds []string `yaml:"deny"`
	// DenyFunctions refuses statements that call one of these functions
	// anywhere (pg_read_file, pg_ls_dir, lo_import, lo_export, dblink …),
	// named without schema (a schema given is ignored), case-insensitive.
	DenyFunctions []string `yaml:"deny_functions"`
	// DenyDeleteWithoutWhere / DenyUpdateWithoutWhere refuse a DELETE or
	// UPDATE of every row, also in a writing CTE, PREPARE or EXPLAIN
	// ANALYZE.
	DenyDeleteWithoutWhere bool `yaml:"deny_delete_without_where"`
	DenyUpdateWithoutWhere bool `yaml:"deny_update_without_where"`
	// DenyMultipleStatements refuses a Query of more than one statement.
	DenyMultipleStatements bool `yaml:"deny_multiple_statements"`
	// MaxStatementBytes refuses a query text longer than this (0: no
	// limit).
	MaxStatementBytes int `yaml:"max_statement_bytes"`
	// Mode is off (the default: no allow-list), learn (every fingerprint
	// is allowed and recorded, see Firewall.Learned) or enforce (only the
	// fingerprints in Allow are).
	Mode string `yaml:"mode"`
	// Allow are the fingerprints (pg_query fingerprints, 16 hex digits)
	// allowed in enforce mode.
	Allow []string `yaml:"allow"`
	// AllowFile is a file of more fingerprints to allow, one a line (a
	// `#` line above each holds its normalized text), which the admin
	// console's FIREWALL SAVE writes from what learn mode recorded. This
	// package reads no file: cmd/pgshield reads it (relative to the policy
	// file's directory), appends its fingerprints to Allow and sets
	// AllowFile to the path it read before Compile; the firewall keeps
	// the path for FIREWALL SAVE.
	AllowFile string `yaml:"allow_file"`
}

// Firewall modes.
const (
	FirewallOff     = "off"
	FirewallLearn   = "learn"
	FirewallEnforce = "enforce"
)

// MaxLearnedFingerprints is how many fingerprints a service records in
// learn mode; later new ones are allowed but not recorded.
const MaxLearnedFingerprints = 10000

// MaxLearnedQueryBytes bounds the normalized text learn mode keeps with a
// fingerprint; a longer one is cut (at a character) and ends in "…".
const MaxLearnedQueryBytes = 2048

// Firewall is the compiled firewall of every service. It is safe for
// concurrent use.
type Firewall struct {
	services map[string]*serviceFirewall
}

type serviceFirewall struct {
	name            string
	denyKinds       []string // normalized: upper case, single spaces
	denyEntries     []string // as configured, for the messages
	denyRole        bool
	denyRoleEntry   string
	denyCopyProgram bool
	denyCopyEntry   string
	denyFunctions   map[string]bool
	denyDelete      bool
	denyUpdate      bool
	denyMultiple    bool
	maxBytes        int
	mode            string
	allow           map[string]bool
	allowFile       string

	mu sync.RWMutex
	// learned are the fingerprints learn mode recorded, each with its
	// normalized text ("" when the caller did not give it).
	learned map[string]string
}

// CompileFirewall validates and compiles the rules of each service. An
// error names the offending entry by its path in the policy file
// (firewall.api.deny[2]: …).
func CompileFirewall(rules map[string]FirewallRules) (*Firewall, error) {
	f := &Firewall{services: make(map[string]*serviceFirewall, len(rules))}
	names := make([]string, 0, len(rules))
	for name := range rules {
		names = append(names, name)
	}
	slices.Sort(names) // the first error is the same on every run
	var errs []error
	for _, name := range names {
		s, err := compileService(name, rules[name])
		if err != nil {
			errs = append(errs, err)
			continue
		}
		f.services[name] = s
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return f, nil
}

func compileService(name string, r FirewallRules) (*serviceFirewall, error) {
	if strings.TrimSpace(name) == "" {
		return nil, errors.New("firewall: a service has an empty name")
	}
	path := "firewall." + name
	s := &serviceFirewall{
		name:         name,
		denyDelete:   r.DenyDeleteWithoutWhere,
		denyUpdate:   r.DenyUpdateWithoutWhere,
		denyMultiple: r.DenyMultipleStatements,
		maxBytes:     r.MaxStatementBytes,
		allowFile:    r.AllowFile,
	}
	var errs []error
	known := Kinds()
	for i, entry := range r.DenyKinds {
		k := normalizeKind(entry)
		switch {
		case k == "":
			errs = append(errs, fmt.Errorf("%s.deny[%d]: empty kind", path, i))
		case k == "ROLE":
			s.denyRole, s.denyRoleEntry = true, entry
		case k == "COPY PROGRAM":
			s.denyCopyProgram, s.denyCopyEntry = true, entry
		case !knownKindPrefix(known, k):
			errs = append(errs, fmt.Errorf("%s.deny[%d]: unknown kind %q (a statement kind or its first words, such as DROP, DROP TABLE, TRUNCATE, ALTER, GRANT, REVOKE, ROLE or COPY PROGRAM)", path, i, entry))
		case !slices.Contains(s.denyKinds, k):
			s.denyKinds = append(s.denyKinds, k)
			s.denyEntries = append(s.denyEntries, entry)
		}
	}
	for i, fn := range r.DenyFunctions {
		n := strings.ToLower(strings.TrimSpace(fn))
		if dot := strings.LastIndexByte(n, '.'); dot >= 0 {
			n = n[dot+1:]
		}
		if !identifier(n) {
			errs = append(errs, fmt.Errorf("%s.deny_functions[%d]: %q is not a function name", path, i, fn))
			continue
		}
		if s.denyFunctions == nil {
			s.denyFunctions = make(map[string]bool)
		}
		s.denyFunctions[n] = true
	}
	if r.MaxStatementBytes < 0 {
		errs = append(errs, fmt.Errorf("%s.max_statement_bytes: %d is negative", path, r.MaxStatementBytes))
	}
	switch m := strings.ToLower(strings.TrimSpace(r.Mode)); m {
	case "", FirewallOff:
		s.mode = FirewallOff
	case FirewallLearn, FirewallEnforce:
		s.mode = m
	default:
		errs = append(errs, fmt.Errorf("%s.mode: unknown mode %q (off, learn or enforce)", path, r.Mode))
	}
	for i, fp := range r.Allow {
		v := strings.ToLower(strings.TrimSpace(fp))
		if !fingerprintText(v) {
			errs = append(errs, fmt.Errorf("%s.allow[%d]: %q is not a statement fingerprint (16 hex digits, as pg_query computes it)", path, i, fp))
			continue
		}
		if s.allow == nil {
			s.allow = make(map[string]bool)
		}
		s.allow[v] = true
	}
	if s.mode == FirewallEnforce && len(r.Allow) == 0 {
		errs = append(errs, fmt.Errorf("%s.allow: mode enforce with no fingerprint would refuse every statement", path))
	}
	if s.mode == FirewallLearn {
		s.learned = make(map[string]string)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return s, nil
}

// normalizeKind upper-cases a configured kind, with single spaces, and
// reads USER and GROUP as ROLE (CREATE USER → CREATE ROLE).
func normalizeKind(k string) string {
	words := strings.Fields(strings.ToUpper(k))
	if n := len(words); n > 0 && n <= 2 && (words[n-1] == "USER" || words[n-1] == "GROUP") {
		words[n-1] = "ROLE"
	}
	return strings.Join(words, " ")
}

func knownKindPrefix(known []string, k string) bool {
	for _, kind := range known {
		if kindMatches(kind, k) {
			return true
		}
	}
	return false
}

// kindMatches reports whether the deny entry d matches the statement
// kind: the kind is d, or starts with d and a space.
func kindMatches(kind, d string) bool {
	return kind == d || (len(kind) > len(d) && kind[len(d)] == ' ' && kind[:len(d)] == d)
}

// roleKind: role DDL and membership, which the ROLE entry denies.
func roleKind(kind string) bool {
	switch kind {
	case "CREATE ROLE", "ALTER ROLE", "DROP ROLE", "GRANT ROLE", "REVOKE ROLE":
		return true
	}
	return false
}

func identifier(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' && i > 0 || c == '$' && i > 0 || c >= 0x80) {
			return false
		}
	}
	return true
}

func fingerprintText(s string) bool {
	if len(s) != 16 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !(s[i] >= '0' && s[i] <= '9' || s[i] >= 'a' && s[i] <= 'f') {
			return false
		}
	}
	return true
}

// Check judges a Query (or Parse) text of service: stmts is its analysis,
// fingerprint its pg_query fingerprint (the whole text, one per text),
// textLen its length in bytes. It returns nil when the firewall allows
// it, else a Violation with SQLSTATE 42501 naming the rule. A service
// with no rules allows everything. In learn mode an allowed fingerprint
// is recorded. A text of no statement (empty, only comments) is allowed
// by every rule but max_statement_bytes. Check does not allocate when it
// allows a text it has seen.
func (f *Firewall) Check(service string, stmts []Statement, fingerprint string, textLen int) *Violation {
	return f.CheckNormalized(service, stmts, fingerprint, "", textLen)
}

// CheckNormalized is Check with the text's normalized form (every
// literal replaced by $n, as pg_query normalizes it: router's
// Class.Normalized), which learn mode records with a new fingerprint for
// the admin console (SHOW FIREWALL, FIREWALL SAVE). Never pass the text
// itself: its literals may be personal data.
func (f *Firewall) CheckNormalized(service string, stmts []Statement, fingerprint, normalized string, textLen int) *Violation {
	if f == nil {
		return nil
	}
	s := f.services[service]
	if s == nil {
		return nil
	}
	if s.maxBytes > 0 && textLen > s.maxBytes {
		return s.refuse("max_statement_bytes", fmt.Sprintf("a query of %d bytes", textLen),
			fmt.Sprintf("The limit is %d bytes.", s.maxBytes))
	}
	if s.denyMultiple && len(stmts) > 1 {
		return s.refuse("deny_multiple_statements", fmt.Sprintf("a query of %d statements", len(stmts)),
			"Send one statement per query.")
	}
	for i := range stmts {
		if v := s.checkStatement(&stmts[i]); v != nil {
			return v
		}
	}
	if len(stmts) == 0 {
		return nil
	}
	switch s.mode {
	case FirewallLearn:
		s.learn(fingerprint, normalized)
	case FirewallEnforce:
		if !s.allow[fingerprint] {
			v := s.refuse("allow", "a statement whose fingerprint is not in its allow list",
				"The statement's fingerprint is "+strconv.Quote(fingerprint)+".")
			v.Hint = "Add the fingerprint to firewall." + s.name + ".allow, or collect fingerprints in mode learn."
			return v
		}
	}
	return nil
}

func (s *serviceFirewall) checkStatement(st *Statement) *Violation {
	for i, d := range s.denyKinds {
		if kindMatches(st.Kind, d) {
			return s.refuse("deny", article(st.Kind)+" "+st.Kind,
				fmt.Sprintf("The kind %s matches %q in firewall.%s.deny.", st.Kind, s.denyEntries[i], s.name))
		}
	}
	if s.denyRole && roleKind(st.Kind) {
		return s.refuse("deny", article(st.Kind)+" "+st.Kind,
			fmt.Sprintf("The kind %s matches %q in firewall.%s.deny.", st.Kind, s.denyRoleEntry, s.name))
	}
	if s.denyCopyProgram && st.CopyProgram {
		return s.refuse("deny", "a COPY … PROGRAM",
			fmt.Sprintf("COPY … PROGRAM matches %q in firewall.%s.deny.", s.denyCopyEntry, s.name))
	}
	if s.denyFunctions != nil {
		for _, fn := range st.Functions {
			if s.denyFunctions[fn] {
				return s.refuse("deny_functions", "a call to "+fn, "")
			}
		}
	}
	if s.denyDelete && st.DeleteWithoutWhere {
		return s.refuse("deny_delete_without_where", "a DELETE without WHERE", "")
	}
	if s.denyUpdate && st.UpdateWithoutWhere {
		return s.refuse("deny_update_without_where", "an UPDATE without WHERE", "")
	}
	return nil
}

func (s *serviceFirewall) refuse(rule, what, detail string) *Violation {
	return &Violation{
		Code:    "42501",
		Message: "firewall rule " + rule + " of service " + s.name + " refused " + what,
		Detail:  detail,
		Kind:    "firewall",
	}
}

func article(kind string) string {
	if kind != "" && strings.IndexByte("AEIOU", kind[0]) >= 0 {
		return "an"
	}
	return "a"
}

func (s *serviceFirewall) learn(fp, normalized string) {
	if fp == "" {
		return
	}
	s.mu.RLock()
	_, seen := s.learned[fp]
	full := len(s.learned) >= MaxLearnedFingerprints
	s.mu.RUnlock()
	if seen || full {
		return
	}
	normalized = keptQuery(normalized)
	s.mu.Lock()
	if _, seen := s.learned[fp]; !seen && len(s.learned) < MaxLearnedFingerprints {
		s.learned[fp] = normalized
	}
	s.mu.Unlock()
}

// keptQuery is the normalized text learn mode keeps: a copy (the
// caller's string may alias a buffer, and a long text is not kept alive
// by a part of it), of at most MaxLearnedQueryBytes.
func keptQuery(q string) string {
	if len(q) <= MaxLearnedQueryBytes {
		return strings.Clone(q)
	}
	const ellipsis = "…"
	end := MaxLearnedQueryBytes - len(ellipsis)
	for end > 0 && !utf8.RuneStart(q[end]) {
		end--
	}
	return q[:end] + ellipsis
}

// Learned returns, sorted, the fingerprints service has allowed in learn
// mode (at most MaxLearnedFingerprints); nil for a service not in learn
// mode.
func (f *Firewall) Learned(service string) []string {
	if f == nil {
		return nil
	}
	s := f.services[service]
	if s == nil || s.learned == nil {
		return nil
	}
	s.mu.RLock()
	out := make([]string, 0, len(s.learned))
	for fp := range s.learned {
		out = append(out, fp)
	}
	s.mu.RUnlock()
	slices.Sort(out)
	return out
}

// Mode returns the mode of service: off, learn or enforce (off for a
// service with no rules).
func (f *Firewall) Mode(service string) string {
	if f == nil {
		return FirewallOff
	}
	if s := f.services[service]; s != nil {
		return s.mode
	}
	return FirewallOff
}

// Governs reports whether service has firewall rules at all, so that a
// caller skips the statement analysis for the services it leaves alone.
func (f *Firewall) Governs(service string) bool { return f != nil && f.services[service] != nil }
