package policy

import (
	"cmp"
	"slices"
	"strconv"
	"strings"
)

// What the admin console shows of a compiled policy (SHOW POLICY, SHOW
// FIREWALL) and what FIREWALL SAVE writes. Read only: nothing here
// changes a Policy or a Firewall.

// RuleInfo is one rule in force: one constraint name, as a Violation
// carries it (Violation.Constraint) and the generated SQL names it.
type RuleInfo struct {
	Database, Table string
	// Column is the column the rule judges; "" for a row rule.
	Column string
	// Rule is the constraint name a Violation of the rule carries.
	Rule string
	// Kind is what the rule judges, as Violation.Kind says it: type,
	// required, length, range, pattern, enum, cel, row or transition. A
	// column rule with a name is one constraint for all of its kinds,
	// listed in the order they are judged, joined by "," (required,length).
	Kind string
	// Services is the rule's scope: "" for every service, "api, web" for
	// services, "except jobs" (or "except jobs, web") for except_services.
	Services string
}

// Rules lists every rule of every table, sorted by database, table,
// column, rule and kind. A nil Policy has none.
func (p *Policy) Rules() []RuleInfo {
	if p == nil {
		return nil
	}
	var out []RuleInfo
	for _, db := range sortedKeys(p.databases) {
		for _, name := range sortedKeys(p.databases[db]) {
			out = p.databases[db][name].appendRules(out)
		}
	}
	slices.SortFunc(out, func(a, b RuleInfo) int {
		return cmp.Or(cmp.Compare(a.Database, b.Database), cmp.Compare(a.Table, b.Table),
			cmp.Compare(a.Column, b.Column), cmp.Compare(a.Rule, b.Rule), cmp.Compare(a.Kind, b.Kind))
	})
	return out
}

// Database returns the name of the database the table's rules belong to.
func (t *TableRules) Database() string { return t.database }

func (t *TableRules) appendRules(out []RuleInfo) []RuleInfo {
	add := func(column, rule, kind string, scope serviceScope) {
		out = append(out, RuleInfo{Database: t.database, Table: t.name, Column: column, Rule: rule, Kind: kind,
			Services: scope.String()})
	}
	for i := range t.cols {
		r := t.cols[i].rule
		if r == nil {
			continue
		}
		// Every constraint a Violation of the rule can carry, with the
		// kinds it carries under it.
		var names []string
		kinds := map[string][]string{}
		note := func(name, kind string) {
			if !slices.Contains(kinds[name], kind) {
				if kinds[name] == nil {
					names = append(names, name)
				}
				kinds[name] = append(kinds[name], kind)
			}
		}
		for _, k := range r.kinds() {
			note(r.constraint(k), k.String())
		}
		if t.refuseUnknown {
			// A value the proxy cannot evaluate, under on_unknown refuse.
			u := &r.viols[violUnknown]
			note(u.Constraint, u.Kind)
		}
		for _, name := range names {
			add(r.column, name, strings.Join(kinds[name], ","), r.scope)
		}
	}
	for _, r := range t.rows {
		add("", r.name, "row", r.scope)
	}
	for _, r := range t.transitions {
		add(r.column, r.name, "transition", r.scope)
	}
	return out
}

// String is the scope as RuleInfo.Services writes it.
func (s serviceScope) String() string {
	switch {
	case len(s.only) > 0:
		return strings.Join(s.only, ", ")
	case len(s.except) > 0:
		return "except " + strings.Join(s.except, ", ")
	}
	return ""
}

// FirewallInfo is the firewall of one service.
type FirewallInfo struct {
	Service string
	Mode    string // off, learn or enforce
	// AllowFile is where FIREWALL SAVE writes the service's allow list:
	// the allow_file as cmd/pgshield resolved it; "" without one.
	AllowFile string
	// Deny summarizes the deny rules, as the policy file writes them
	// ("deny: DROP, TRUNCATE; deny_delete_without_where"); "" without any.
	Deny string
	// Allowed counts the fingerprints of the allow list (allow and
	// allow_file), Learned those learn mode recorded.
	Allowed, Learned int
}

// Services lists the services with firewall rules, by name.
func (f *Firewall) Services() []FirewallInfo {
	if f == nil {
		return nil
	}
	out := make([]FirewallInfo, 0, len(f.services))
	for _, name := range sortedKeys(f.services) {
		s := f.services[name]
		s.mu.RLock()
		learned := len(s.learned)
		s.mu.RUnlock()
		out = append(out, FirewallInfo{Service: name, Mode: s.mode, AllowFile: s.allowFile, Deny: s.denySummary(),
			Allowed: len(s.allow), Learned: learned})
	}
	return out
}

// denySummary writes the deny rules of the service as the policy file
// keys them.
func (s *serviceFirewall) denySummary() string {
	var parts []string
	deny := slices.Clone(s.denyEntries)
	if s.denyRole {
		deny = append(deny, s.denyRoleEntry)
	}
	if s.denyCopyProgram {
		deny = append(deny, s.denyCopyEntry)
	}
	if len(deny) > 0 {
		parts = append(parts, "deny: "+strings.Join(deny, ", "))
	}
	if len(s.denyFunctions) > 0 {
		parts = append(parts, "deny_functions: "+strings.Join(sortedKeys(s.denyFunctions), ", "))
	}
	if s.denyDelete {
		parts = append(parts, "deny_delete_without_where")
	}
	if s.denyUpdate {
		parts = append(parts, "deny_update_without_where")
	}
	if s.denyMultiple {
		parts = append(parts, "deny_multiple_statements")
	}
	if s.maxBytes > 0 {
		parts = append(parts, "max_statement_bytes: "+strconv.Itoa(s.maxBytes))
	}
	return strings.Join(parts, "; ")
}

// FingerprintInfo is one statement fingerprint of a service's firewall.
type FingerprintInfo struct {
	Fingerprint string // 16 hex digits, as pg_query computes it
	// Query is the normalized text learn mode recorded with it (literals
	// replaced by $n); "" when not known.
	Query string
	// Allowed: in the allow list (allow, allow_file). Learned: recorded
	// in learn mode since the policy was loaded. Both may be true.
	Allowed, Learned bool
}

// Fingerprints lists the fingerprints service allows or has learned, by
// fingerprint; nil for a service without firewall rules.
func (f *Firewall) Fingerprints(service string) []FingerprintInfo {
	if f == nil {
		return nil
	}
	s := f.services[service]
	if s == nil {
		return nil
	}
	byFP := make(map[string]*FingerprintInfo, len(s.allow))
	for fp := range s.allow {
		byFP[fp] = &FingerprintInfo{Fingerprint: fp, Allowed: true}
	}
	s.mu.RLock()
	for fp, q := range s.learned {
		fi := byFP[fp]
		if fi == nil {
			fi = &FingerprintInfo{Fingerprint: fp}
			byFP[fp] = fi
		}
		fi.Learned, fi.Query = true, q
	}
	s.mu.RUnlock()
	out := make([]FingerprintInfo, 0, len(byFP))
	for _, fp := range sortedKeys(byFP) {
		out = append(out, *byFP[fp])
	}
	return out
}
