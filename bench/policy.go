package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"gopkg.in/yaml.v3"

	"github.com/pgshield/pgshield/cmd/pgshield/config"
	"github.com/pgshield/pgshield/internal/example"
)

// The policy scenario: what the validation policy costs the writes it
// judges, and that the writes it does not govern pay nothing for it. Two
// pgshield processes configured alike, one with policy_file naming the
// example application's policy, run the same pgbench scripts side by side
// in the same rounds.

// policyGoal is the bound: TPS with the policy at least this
// fraction of TPS without it, for the governed workload.
const policyGoal = 0.95

// policyClients is pgbench's client count in the scenario.
const policyClients = 50

// policyModes are the pgbench query modes of the scenario: values from
// Bind parameters, and literals of the query text.
var policyModes = []string{"prepared", "simple"}

// The targets of the scenario.
const (
	tPolicyOn  = "policy-on"
	tPolicyOff = "policy-off"
)

// The example policy names its database app; the bench's clients connect
// to bench, so the policy written for the scenario names that.
const (
	examplePolicyDatabase = "app"
	benchDatabase         = "bench"
)

// The values the governed workload writes, each valid under the example
// policy (a test holds them to it): phones of 11 digits without a plus
// (E.164), scores over the whole allowed range, a status and a source
// the enum and the pattern accept.
const (
	leadPhoneMin = 14150000000
	leadPhoneMax = 14159999999
	leadScoreMin = 0
	leadScoreMax = 100
	leadStatus   = "RECEIVED"
	leadSource   = "web"
	// A client's first email is c<client_id>@example.com; each next one is
	// n<id>@example.com, from the id of the row it inserted last, so that
	// no two are equal (the column is unique).
	leadFirstEmail = "c%d@example.com"
	leadNextEmail  = "n%d@example.com"
)

// policyWorkload is one pgbench script of the scenario.
type policyWorkload struct {
	name     string // the table it writes
	governed bool   // the policy has rules for the table
	script   func(mode string) string
	args     []string // more pgbench options it needs
}

var policyWorkloads = []policyWorkload{
	{name: "leads", governed: true, script: leadScript, args: []string{"-D", "started=0"}},
	{name: "audit_log", governed: false, script: auditScript},
}

// leadScript inserts one lead with five governed columns. pgbench sends
// a variable as a Bind parameter in prepared mode and pastes its text into
// the query in simple mode, where a text value therefore needs quotes;
// an expression (such as 'c' || :client_id) would be a value the proxy
// cannot evaluate and leaves to the database, so each governed value is
// one variable or one literal. pgbench's \set makes numbers only: the
// email comes from the row inserted before (RETURNING … \gset), and a
// client's first from a SELECT run once (started, set with -D).
func leadScript(mode string) string {
	text := func(v string) string {
		if mode == "simple" {
			return "'" + v + "'"
		}
		return v
	}
	first := strings.Replace(leadFirstEmail, "%d", "' || (:client_id)::text || '", 1)
	next := strings.Replace(leadNextEmail, "%d", "' || id || '", 1)
	return fmt.Sprintf(`\set phone random(%d, %d)
\set score random(%d, %d)
\if :started = 0
SELECT '%s' AS email \gset
\set started 1
\endif
INSERT INTO leads (email, phone, quality_score, status, source) VALUES (%s, %s, :score, '%s', '%s') RETURNING '%s' AS email \gset
`, leadPhoneMin, leadPhoneMax, leadScoreMin, leadScoreMax, first, text(":email"), text(":phone"), leadStatus, leadSource, next)
}

// auditScript inserts one row into audit_log, which the policy does not
// govern: a write of the same shape whose table the proxy only looks up.
func auditScript(string) string {
	return `\set r random(1, 1000000000)
INSERT INTO audit_log (table_name, row_id, action, changed_by, created_by) VALUES ('leads', :r, 'INSERT', 'bench', 'bench')
`
}

// policyForDatabase returns the policy file src with the key from of its
// databases section renamed to; comments are kept.
func policyForDatabase(src []byte, from, to string) ([]byte, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(src, &doc); err != nil {
		return nil, err
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		return nil, errors.New("the policy file is not a mapping")
	}
	var dbs *yaml.Node
	for root, i := doc.Content[0], 0; i+1 < len(root.Content); i += 2 {
		if root.Content[i].Value == "databases" {
			dbs = root.Content[i+1]
		}
	}
	if dbs == nil || dbs.Kind != yaml.MappingNode {
		return nil, errors.New("the policy file has no databases mapping")
	}
	var key *yaml.Node
	for i := 0; i+1 < len(dbs.Content); i += 2 {
		switch dbs.Content[i].Value {
		case from:
			key = dbs.Content[i]
		case to:
			return nil, fmt.Errorf("the policy file already has database %s", to)
		}
	}
	if key == nil {
		return nil, fmt.Errorf("the policy file has no database %s", from)
	}
	key.Value = to
	return yaml.Marshal(&doc)
}

// policyResult is what the scenario measured.
type policyResult struct {
	duration time.Duration
	rounds   int
	runs     runSet // "workload mode target" → runs, by round
	// check is what each instance answered a lead with a malformed email,
	// sent as a literal and as a Bind parameter.
	check policyCheck
	// firewall: the policy has firewall rules for the bench's service, so
	// every statement of that service is analysed for them, the
	// ungoverned workload's too.
	firewall bool
	err      error // the scenario could not run, or the policy was not in force where expected
}

// benchService is the service of the bench's user (shieldBody).
const benchService = "api"

// policyCheck: each field is "accepted" or the SQLSTATE and constraint
// of the refusal.
type policyCheck struct {
	onLiteral, onParam, offLiteral, offParam string
}

// expectedRefusal is what the instance with the policy answers a
// malformed email with.
const expectedRefusal = "23514 leads_email_type"

func onlyPolicy(duration time.Duration, rounds int, pgshieldBin, profiles string) error {
	return onlyScenario(profiles, func(e *env) (string, error) {
		res := policyCost(e, pgshieldBin, duration, rounds)
		return res.markdown(), res.err
	})
}

// policyCost runs the scenario in e's database: the example schema, two
// pgshields (with and without the policy), then rounds of each workload
// and mode through each, the order reversed every round and the tables
// emptied before every run.
func policyCost(e *env, bin string, duration time.Duration, rounds int) policyResult {
	res := policyResult{duration: duration, rounds: rounds}
	ctx := context.Background()
	say("validation policy on versus off: two pgshields, the example schema and policy, %d rounds", rounds)
	// As role bench, which owns the database: the tables are its own.
	if err := e.pg.Exec(ctx, benchDatabase, "SET ROLE bench;\n"+example.Schema()); err != nil {
		res.err = fmt.Errorf("the example schema: %w", err)
		return res
	}
	pf, err := policyForDatabase([]byte(example.Policy()), examplePolicyDatabase, benchDatabase)
	if err != nil {
		res.err = fmt.Errorf("the example policy: %w", err)
		return res
	}
	p, err := config.ParsePolicy(pf)
	if err != nil {
		res.err = fmt.Errorf("the example policy: %w", err)
		return res
	}
	res.firewall = p.Firewall().Governs(benchService)
	if err := os.WriteFile(filepath.Join(e.dir, "policy.yaml"), pf, 0o644); err != nil {
		res.err = err
		return res
	}
	profile := func(target string) string {
		if e.profiles == "" {
			return ""
		}
		return filepath.Join(e.profiles, target+".prof")
	}
	on, err := startPgshield(e.dir, tPolicyOn, bin, e.pg, shieldOptions{policyFile: "policy.yaml", cpuProfile: profile(tPolicyOn)})
	if err != nil {
		res.err = fmt.Errorf("pgshield with the policy: %w", err)
		return res
	}
	defer on.stop()
	off, err := startPgshield(e.dir, tPolicyOff, bin, e.pg, shieldOptions{cpuProfile: profile(tPolicyOff)})
	if err != nil {
		res.err = fmt.Errorf("pgshield without the policy: %w", err)
		return res
	}
	defer off.stop()
	procs := map[string]*proc{tPolicyOn: on, tPolicyOff: off}
	truncate := func() error {
		return e.pg.Exec(ctx, benchDatabase, "TRUNCATE leads, audit_log CASCADE") // lead_assignments refers to leads
	}

	// The policy is in force in one and not in the other, or the
	// comparison measures nothing.
	res.check.onLiteral, res.check.onParam, err = sendBadLead(on.port)
	if err == nil {
		res.check.offLiteral, res.check.offParam, err = sendBadLead(off.port)
	}
	if err == nil {
		err = truncate()
	}
	if err != nil {
		res.err = fmt.Errorf("checking the policy: %w", err)
		return res
	}
	if c := res.check; c.onLiteral != expectedRefusal || c.onParam != expectedRefusal || c.offLiteral != "accepted" || c.offParam != "accepted" {
		res.err = fmt.Errorf("a malformed email: with the policy %s (literal) and %s (parameter), want %s; without %s and %s, want accepted",
			c.onLiteral, c.onParam, expectedRefusal, c.offLiteral, c.offParam)
		return res
	}

	scripts := map[string]string{}
	for _, w := range policyWorkloads {
		for _, mode := range policyModes {
			path := filepath.Join(e.dir, "policy-"+w.name+"-"+mode+".sql")
			if err := os.WriteFile(path, []byte(w.script(mode)), 0o644); err != nil {
				res.err = err
				return res
			}
			scripts[w.name+" "+mode] = path
		}
	}
	run := func(w policyWorkload, mode, target string, d time.Duration) (measure, error) {
		if err := truncate(); err != nil {
			return measure{}, err
		}
		return e.scriptThrough(procs[target], scripts[w.name+" "+mode], mode, policyClients, d, w.args...), nil
	}
	// A short unmeasured run of each script per target first.
	for _, target := range []string{tPolicyOn, tPolicyOff} {
		for _, w := range policyWorkloads {
			for _, mode := range policyModes {
				if _, err := run(w, mode, target, 2*time.Second); err != nil {
					res.err = err
					return res
				}
			}
		}
	}
	say("pgbench -f (leads: governed INSERT; audit_log: ungoverned INSERT), %d clients, %d rounds of %s per target, workload and mode", policyClients, rounds, duration)
	for r := 0; r < rounds; r++ {
		for _, w := range policyWorkloads {
			for _, mode := range policyModes {
				for _, target := range roundOrder([]string{tPolicyOn, tPolicyOff}, r) {
					m, err := run(w, mode, target, duration)
					if err != nil {
						res.err = err
						return res
					}
					say("round %d %-9s %-9s %-10s tps %8.0f  pgshield cpu %s µs/tx  failed %d %s", r+1, w.name, mode, target, m.tps, cpuCell(m.cpuPerTx()), m.failed, m.note)
					res.runs.add(w.name, mode, target, m)
				}
			}
		}
	}
	if err := truncate(); err != nil {
		res.err = err
	}
	return res
}

// scriptThrough runs the pgbench script through pooler p and records the
// CPU time p used meanwhile.
func (e *env) scriptThrough(p *proc, script, mode string, clients int, d time.Duration, extra ...string) measure {
	args := append([]string{"-n", "-f", script, "-M", mode, "-c", strconv.Itoa(clients), "-j", "2", "-T", strconv.Itoa(int(d.Seconds()))}, extra...)
	before, errBefore := p.cpuTime()
	m := e.runPgbench(p.port, args...)
	after, errAfter := p.cpuTime()
	if errBefore == nil && errAfter == nil {
		m.cpu, m.cpuRead = after-before, true
	}
	return m
}

// sendBadLead inserts a lead with a malformed email through port, in a
// simple Query (a literal) and in an extended one (a Bind parameter), and
// says what each got: "accepted", or the SQLSTATE and constraint of the
// error.
func sendBadLead(port int) (literal, param string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=bench password=bench dbname=%s sslmode=disable", port, benchDatabase))
	if err != nil {
		return "", "", err
	}
	defer conn.Close(context.Background())
	outcome := func(err error) (string, error) {
		var pe *pgconn.PgError
		switch {
		case err == nil:
			return "accepted", nil
		case errors.As(err, &pe):
			return pe.Code + " " + pe.ConstraintName, nil
		}
		return "", err
	}
	_, err = conn.Exec(ctx, "INSERT INTO leads (email) VALUES ('not-an-email')").ReadAll()
	if literal, err = outcome(err); err != nil {
		return "", "", err
	}
	rr := conn.ExecParams(ctx, "INSERT INTO leads (email) VALUES ($1)", [][]byte{[]byte("also not an email")}, nil, nil, nil)
	_, err = rr.Close()
	if param, err = outcome(err); err != nil {
		return "", "", err
	}
	return literal, param, nil
}

// policyFigures are one workload and mode's figures: medians of each
// target's runs, and the rounds' paired on/off ratios.
type policyFigures struct {
	on, off       summary
	tps, cpu      []float64 // per round, on / off
	medTPS, medCP float64   // their medians (0 without one)
}

func (r *policyResult) figures(workload, mode string) policyFigures {
	a, b := r.runs.of(workload, mode, tPolicyOn), r.runs.of(workload, mode, tPolicyOff)
	f := policyFigures{on: summarize(a), off: summarize(b)}
	f.tps, f.cpu = pairedRatios(a, b)
	f.medTPS, f.medCP = median(f.tps), median(f.cpu)
	return f
}

// goal says how a workload's TPS ratio stands: against policyGoal for the
// governed one; for the other, whether 1 lies within the rounds' range.
func (f policyFigures) goal(governed bool) string {
	if len(f.tps) == 0 {
		return "n/a"
	}
	lo, hi := spread(f.tps)
	if !governed {
		if lo <= 1 && 1 <= hi {
			return "none; 1 lies within the rounds' range"
		}
		return "none; 1 lies outside the rounds' range"
	}
	switch {
	case f.medTPS < policyGoal:
		return "missed"
	case lo >= policyGoal:
		return "met in every round"
	}
	return fmt.Sprintf("met by the median; not in every round (lowest %.2f)", lo)
}

func ratioCell(x float64) string {
	if x <= 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.3f", x)
}

func (r policyResult) markdown() string {
	var b strings.Builder
	b.WriteString("\n## Validation policy cost\n\n")
	if r.err != nil && len(r.runs) == 0 {
		fmt.Fprintf(&b, "The policy scenario failed: %v\n", r.err)
		return b.String()
	}
	fmt.Fprintf(&b, "Two pgshield processes configured alike (transaction mode, 20 server connections, SQL classification on, trust authentication, users of service api), one with `policy_file:` naming the example application's policy (`internal/example/policy.yaml`, its database key `%s` renamed to the bench's `%s`), the other without; the example schema's tables in the bench's database, owned by the bench's role. Per round, every workload and mode ran through each process in turn, the order reversed every round, the tables truncated before every run: `pgbench -f <script> -M <mode> -c %d -j 2 -T %d`, %d rounds; medians shown. on/off is the median of the rounds' ratios (the two runs of a round are seconds apart, which cancels most of the machine's drift), and their min–max shows how far the noise reaches. pgshield CPU is the process's utime + stime over the transactions pgbench completed. Goal (issue): with the policy, TPS of the governed workload is at least %.2f × without it.\n\n",
		examplePolicyDatabase, benchDatabase, policyClients, int(r.duration.Seconds()), r.rounds, policyGoal)
	b.WriteString("- **leads**: one `INSERT INTO leads` of five governed columns (email, phone, quality_score, status, source) with values the policy accepts: Bind parameters in prepared mode (status and source are literals of the prepared statement), literals of each query text in simple mode, whose every text is new to the proxy. Each client's next email comes from the id of the row it inserted (`RETURNING … \\gset`), so emails are unique.\n")
	if r.firewall {
		fmt.Fprintf(&b, "- **audit_log**: one `INSERT INTO audit_log` of five columns, a table the policy has no rules for: no value is judged. The example policy has firewall rules for service %s, so this statement is still analysed for the firewall (once per fingerprint) and checked by it.\n\n", benchService)
	} else {
		b.WriteString("- **audit_log**: one `INSERT INTO audit_log` of five columns, a table the policy has no rules for: the proxy looks the table up and judges nothing.\n\n")
	}
	c := r.check
	fmt.Fprintf(&b, "The policy was in force where expected: a lead with a malformed email got `%s` (as a literal) and `%s` (as a Bind parameter) from the process with the policy, `%s` and `%s` from the one without.\n\n", c.onLiteral, c.onParam, c.offLiteral, c.offParam)
	b.WriteString("| workload | mode | policy on tps | off tps | on/off tps | rounds' on/off tps | on CPU µs/tx | off CPU µs/tx | on/off CPU | rounds' on/off CPU | goal | failed (on / off) |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	var notes []string
	for _, w := range policyWorkloads {
		for _, mode := range policyModes {
			f := r.figures(w.name, mode)
			fmt.Fprintf(&b, "| %s | %s | %.0f | %.0f | %s | %s | %s | %s | %s | %s | %s | %s / %s |\n", w.name, mode, f.on.tps, f.off.tps,
				ratioCell(f.medTPS), rangeOf(f.tps), cpuCell(f.on.cpu), cpuCell(f.off.cpu), ratioCell(f.medCP), rangeOf(f.cpu),
				f.goal(w.governed), failures(f.on.failed, f.on.note), failures(f.off.failed, f.off.note))
			for _, x := range []struct {
				who string
				s   summary
			}{{"with the policy", f.on}, {"without the policy", f.off}} {
				if x.s.note != "" {
					notes = append(notes, fmt.Sprintf("%s, %s mode, %s: %s. %s", w.name, mode, x.who, x.s.note, abortedNote))
				}
			}
		}
	}
	for _, n := range notes {
		fmt.Fprintf(&b, "\n%s\n", n)
	}
	if r.err != nil {
		fmt.Fprintf(&b, "\nThe scenario stopped early: %v\n", r.err)
	}
	return b.String()
}
