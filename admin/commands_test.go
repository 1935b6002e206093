package admin

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/pgshield/pgshield/poolmgr"
	"github.com/pgshield/pgshield/router"
)

// The command table is the one place a command is defined: the hint of an
// unknown command, SHOW HELP and the dispatch all come from it.
func TestCommandTable(t *testing.T) {
	if got := showItemsHint(); got != showHint {
		t.Errorf("showHint is not the SHOW table:\n got %s\nwant %s", showHint, got)
	}
	seen := map[string]bool{}
	for _, cmd := range commandTable() {
		if cmd.name != strings.ToUpper(cmd.name) || seen[cmd.name] || cmd.run == nil || cmd.usage == "" {
			t.Errorf("command %q: name not upper case, twice, or without a handler or usage", cmd.name)
		}
		seen[cmd.name] = true
		if !strings.Contains(commandsHint(), cmd.usage) {
			t.Errorf("the commands hint does not list %s", cmd.usage)
		}
	}
	var help []string
	for _, h := range helpLines() {
		help = append(help, h[0])
	}
	for _, want := range []string{"SHOW POOLS", "SHOW QUERIES [n]", "SHOW HELP", "PAUSE [database]", "SET <setting> = <value>", "RESET <setting>|ALL", "READMIT <database> <host:port>",
		"SHOW POLICY", "SHOW FIREWALL", "FIREWALL SAVE [service]"} {
		if !slices.Contains(help, want) {
			t.Errorf("SHOW HELP has no line %q", want)
		}
	}
}

// RESET <setting> and RESET ALL reach the Source; ALL unquoted means every
// SET, a quoted "all" is a setting.
func TestConsoleReset(t *testing.T) {
	e := startConsole(t)
	c, ns := e.connect(t, true)
	for _, tc := range []struct{ sql, notice string }{
		{"RESET pool.wait_timeout", "pool.wait_timeout reset: the configuration file's value applies"},
		{"reset Pool.Wait_Timeout;", "pool.wait_timeout reset"},
		{"RESET ALL", "every SET dropped: the configuration file's values apply"},
		{`RESET "all"`, "all reset"},
	} {
		res := exec1(t, c, tc.sql)
		if len(res) != 1 || res[0].CommandTag.String() != "RESET" {
			t.Errorf("%s: %d results, want one with tag RESET", tc.sql, len(res))
			continue
		}
		if got := ns.take(); len(got) != 1 || !strings.Contains(got[0], tc.notice) {
			t.Errorf("%s: notices %q, want %q", tc.sql, got, tc.notice)
		}
	}
	want := []string{"RESET pool.wait_timeout", "RESET pool.wait_timeout", "RESET ", "RESET all"}
	if got := e.src.recorded(); !slices.Equal(got, want) {
		t.Errorf("Source calls\n got %q\nwant %q", got, want)
	}
	for _, tc := range []struct{ sql, code, message string }{
		{"RESET", "42601", "RESET needs a setting"},
		{"RESET a b", "42601", "RESET takes one setting, got 2 arguments"},
		{"RESET =", "42601", "RESET needs a setting"},
	} {
		_, err := c.PgConn().Exec(ctxT(t), tc.sql).ReadAll()
		if pe := pgErr(t, err); pe.Code != tc.code || !strings.Contains(pe.Message, tc.message) {
			t.Errorf("%s: %s %q, want %s %q", tc.sql, pe.Code, pe.Message, tc.code, tc.message)
		}
	}
	if got := e.src.recorded(); len(got) != len(want) {
		t.Errorf("refused RESETs reached the Source: %q", got[len(want):])
	}

	// SHOW CONFIG says which values come from a console SET.
	res := exec1(t, c, "SHOW CONFIG")[0]
	if got := strings.Join(columnNames(res), " "); got != "key value source" {
		t.Fatalf("SHOW CONFIG columns %s", got)
	}
	if string(res.Rows[0][2]) != "" || string(res.Rows[1][2]) != "set" {
		t.Errorf("SHOW CONFIG source %q %q, want \"\" and set", res.Rows[0][2], res.Rows[1][2])
	}
}

// The console reports an error of the pools or the topology under the
// SQLSTATE a client would get for it, through the proxy's one mapping.
func TestSourceErrorsMappedAsForClients(t *testing.T) {
	for err, want := range map[error]string{
		fmt.Errorf("x: %w", poolmgr.ErrWaitTimeout):                    "53300",
		&poolmgr.DialError{Backend: "h:1", Err: errors.New("refused")}: "08006",
		fmt.Errorf("x: %w", router.ErrFailingOver):                     "57P03",
		errors.New("something else"):                                   defaultSourceCode,
	} {
		if got := sourceError("SHOW HEALTH", err).Code; got != want {
			t.Errorf("%v: %s, want %s", err, got, want)
		}
	}
}
