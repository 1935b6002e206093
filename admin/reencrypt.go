package admin

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/pgshield/pgshield/crypto"
	"github.com/pgshield/pgshield/proxy"
)

// REENCRYPT <table>: a job that rewrites, under the primary key of their
// kind, the values of a table's encrypted columns that are under an
// older key or not encrypted at all, so that the older keys can be
// retired.
//
// It works on the database's primary directly (not through the proxy),
// in batches by primary key, one transaction each:
//
//	SELECT pk, cols FROM t WHERE pk > $last ORDER BY pk LIMIT $batch FOR UPDATE
//	UPDATE t SET … FROM unnest(…) WHERE t.pk = u.k   -- the rows that changed
//	UPDATE pgshield_reencrypt SET last_pk = …, rows_done = … WHERE id = …
//	COMMIT
//
// so the progress recorded in pgshield_reencrypt is always that of the
// rows committed: a pgshield killed mid-batch loses that batch only, and
// REENCRYPT of the table (or pgshield's next start, Console.ResumeJobs)
// goes on after the last batch committed. A session advisory lock on the
// primary, on the hash of the job key ("reencrypt schema.table"), keeps
// two pgshields from re-encrypting one table at once; it ends with the
// session, so another pgshield can finish what a dead one began.

// pgshield_reencrypt, one row per run of REENCRYPT on a table of the
// database: table_name is the table as REENCRYPT names it, job_key
// "reencrypt schema.table" (whose hashtextextended is the advisory lock),
// last_pk the primary key of the last row done (NULL before the first
// batch), rows_done the rows read, rows_rewritten those written again,
// rows_total count(*) when the run began, key_ids the primary keys it
// re-encrypts to ({randomized, deterministic}), outcome "done" or
// "superseded" (the keys were rotated before it finished, and a new run
// began) once finished_at is set. At most one row of a job key is
// unfinished.
const sqlProgressTable = `CREATE TABLE IF NOT EXISTS pgshield_reencrypt (
	id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	table_name     text NOT NULL,
	job_key        text NOT NULL,
	last_pk        bigint,
	rows_done      bigint NOT NULL DEFAULT 0,
	rows_rewritten bigint NOT NULL DEFAULT 0,
	rows_total     bigint NOT NULL,
	key_ids        bigint[] NOT NULL,
	started_at     timestamptz NOT NULL DEFAULT now(),
	updated_at     timestamptz NOT NULL DEFAULT now(),
	finished_at    timestamptz,
	outcome        text
);
CREATE UNIQUE INDEX IF NOT EXISTS pgshield_reencrypt_unfinished ON pgshield_reencrypt (job_key) WHERE finished_at IS NULL`

// SQLSTATEs of REENCRYPT's refusals.
const (
	codeUndefinedTable  = "42P01"
	codeUndefinedColumn = "42703"
)

// resumeTimeout bounds how long ResumeJobs looks for unfinished runs.
const resumeTimeout = time.Minute

// The outcomes of a finished run.
const (
	outcomeDone       = "done"
	outcomeSuperseded = "superseded"
)

// reencryptSpec is what is re-encrypted: a table of a database and its
// encrypted columns, in name order.
type reencryptSpec struct {
	database, table string
	columns         []reencryptColumn
}

type reencryptColumn struct {
	name string
	ad   string // the associated data: the column's Name, else table.column
	det  bool
}

func newReencryptSpec(db, table string, cols map[string]proxy.EncryptedColumn) reencryptSpec {
	s := reencryptSpec{database: db, table: table}
	for _, name := range sortedKeys(cols) {
		c := cols[name]
		ad := c.Name
		if ad == "" {
			ad = table + "." + name
		}
		s.columns = append(s.columns, reencryptColumn{name: name, ad: ad, det: c.Deterministic})
	}
	return s
}

// reencryptTarget reads REENCRYPT's argument: table, or database.table.
// Without a database it is the only one with encrypted columns.
func reencryptTarget(cols map[string]map[string]map[string]proxy.EncryptedColumn, name string) (db, table string, err error) {
	const cmd = "REENCRYPT"
	var dbs []string
	for _, d := range sortedKeys(cols) {
		for _, t := range cols[d] {
			if len(t) > 0 {
				dbs = append(dbs, d)
				break
			}
		}
	}
	db, table, qualified := strings.Cut(name, ".")
	if !qualified {
		db, table = "", name
	}
	switch {
	case table == "":
		return "", "", Errorf(CodeInvalidParameterValue, "%s needs a table name, got %q", cmd, name).
			withHint("REENCRYPT <table> or REENCRYPT <database>.<table>")
	case db == "" && len(dbs) == 0:
		return "", "", noEncryption(cmd)
	case db == "" && len(dbs) > 1:
		return "", "", Errorf(CodeInvalidParameterValue, "%s: more than one database has encrypted columns: name one, as REENCRYPT <database>.%s", cmd, table).
			withHint("databases with encrypted columns: " + strings.Join(dbs, ", "))
	case db == "":
		db = dbs[0]
	}
	if len(cols[db]) == 0 {
		return "", "", Errorf(CodeInvalidParameterValue, "%s: database %q has no encrypted columns", cmd, db).
			withHint("databases with encrypted columns: " + strings.Join(dbs, ", "))
	}
	if len(cols[db][table]) == 0 {
		var tables []string
		for _, t := range sortedKeys(cols[db]) {
			if len(cols[db][t]) > 0 {
				tables = append(tables, t)
			}
		}
		return "", "", Errorf(CodeInvalidParameterValue, "%s: table %q of database %s has no encrypted columns", cmd, table, db).
			withHint(fmt.Sprintf("tables with encrypted columns in %s: %s", db, strings.Join(tables, ", ")))
	}
	return db, table, nil
}

// check refuses a table REENCRYPT cannot go through.
func (s reencryptSpec) check(rel relation, found bool) error {
	const cmd = "REENCRYPT"
	if !found {
		return Errorf(codeUndefinedTable, "%s: table %s of database %s does not exist", cmd, s.table, s.database)
	}
	for _, c := range s.columns {
		if !rel.columns[c.name] {
			return Errorf(codeUndefinedColumn, "%s: the encrypted column %s.%s of database %s does not exist", cmd, s.table, c.name, s.database)
		}
	}
	if rel.pk == "" {
		return Errorf(CodeFeatureNotSupported, "%s: table %s of database %s cannot be re-encrypted: %s", cmd, rel, s.database, rel.pkProblem).
			withHint("REENCRYPT goes through a table in the order of its primary key, which must be one column of type smallint, integer or bigint")
	}
	return nil
}

// jobKeyOf is the key of the re-encryption of rel: the advisory lock's
// text and pgshield_reencrypt.job_key.
func jobKeyOf(rel relation) string { return "reencrypt " + rel.String() }

const (
	sqlTryLock = `SELECT pg_try_advisory_lock(hashtextextended($1, 0))`
	sqlUnlock  = `SELECT pg_advisory_unlock(hashtextextended($1, 0))`
)

func tryLock(ctx context.Context, conn *pgconn.PgConn, key string) (bool, error) {
	rows, err := execParams(ctx, conn, sqlTryLock, []byte(key))
	if err != nil {
		return false, fmt.Errorf("taking the re-encryption lock: %w", err)
	}
	return len(rows) == 1 && string(rows[0][0]) == "t", nil
}

// lockFree reports whether no session holds the lock of key (taking it
// and letting it go).
func lockFree(ctx context.Context, conn *pgconn.PgConn, key string) (bool, error) {
	got, err := tryLock(ctx, conn, key)
	if err != nil || !got {
		return false, err
	}
	if _, err := execParams(ctx, conn, sqlUnlock, []byte(key)); err != nil {
		return false, fmt.Errorf("releasing the re-encryption lock: %w", err)
	}
	return true, nil
}

func lockHeld(s reencryptSpec) *Error {
	return Errorf(CodeObjectNotInPrerequisiteState, "REENCRYPT: another pgshield is re-encrypting table %s of database %s (it holds the re-encryption lock on the primary)", s.table, s.database).
		withHint("SHOW JOBS on that pgshield follows it; if it stops, REENCRYPT here goes on where it left off")
}

// reencrypting reports whether this pgshield runs the re-encryption of
// key; setReencrypting records that it does.
func (l *Live) reencrypting(key string) bool {
	l.keys.mu.Lock()
	defer l.keys.mu.Unlock()
	return l.keys.running[key]
}

func (l *Live) setReencrypting(key string, on bool) {
	l.keys.mu.Lock()
	defer l.keys.mu.Unlock()
	if l.keys.running == nil {
		l.keys.running = map[string]bool{}
	}
	if on {
		l.keys.running[key] = true
	} else {
		delete(l.keys.running, key)
	}
}

// Reencrypt checks that the table named as REENCRYPT takes it can be
// re-encrypted (it exists with its encrypted columns and a single integer
// primary key, and no other pgshield is re-encrypting it) and returns the
// job that does it.
func (l *Live) Reencrypt(ctx context.Context, name string) (ReencryptJob, error) {
	const cmd = "REENCRYPT"
	cols := l.srv.EncryptedColumns()
	if l.srv.Keyring() == nil || len(cols) == 0 {
		return ReencryptJob{}, noEncryption(cmd)
	}
	db, table, err := reencryptTarget(cols, name)
	if err != nil {
		return ReencryptJob{}, err
	}
	spec := newReencryptSpec(db, table, cols[db][table])
	ctx, cancel := context.WithTimeout(ctx, databaseQueryTimeout)
	defer cancel()
	conn, err := l.connectPrimary(ctx, db)
	if err != nil {
		return ReencryptJob{}, databaseError(db, err)
	}
	defer closeConn(conn)
	rel, found, err := inspectTable(ctx, conn, table)
	if err != nil {
		return ReencryptJob{}, databaseError(db, err)
	}
	if err := spec.check(rel, found); err != nil {
		return ReencryptJob{}, err
	}
	// A lock this pgshield holds is its own job's, which the registry
	// reports as running.
	if key := jobKeyOf(rel); !l.reencrypting(key) {
		free, err := lockFree(ctx, conn, key)
		if err != nil {
			return ReencryptJob{}, databaseError(db, err)
		}
		if !free {
			return ReencryptJob{}, lockHeld(spec)
		}
	}
	return ReencryptJob{Database: db, Table: table, Run: func(ctx context.Context, report func(JobProgress)) error {
		return l.runReencrypt(ctx, spec, report)
	}}, nil
}

// Unfinished lists, as jobs, the re-encryptions pgshield_reencrypt records
// as unfinished in every database with encrypted columns. What cannot be
// resumed (a database down, a table no longer encrypted, another pgshield
// at work on it) is in the error.
func (l *Live) Unfinished(ctx context.Context) ([]ReencryptJob, error) {
	cols := l.srv.EncryptedColumns()
	if l.srv.Keyring() == nil {
		return nil, nil
	}
	var jobs []ReencryptJob
	var errs []error
	for _, db := range sortedKeys(cols) {
		tables, err := l.unfinishedTables(ctx, db)
		if err != nil {
			errs = append(errs, databaseError(db, err))
			continue
		}
		for _, t := range tables {
			if len(cols[db][t]) == 0 {
				errs = append(errs, fmt.Errorf("database %s: the unfinished re-encryption of table %s is not resumed: it has no encrypted columns any more", db, t))
				continue
			}
			job, err := l.Reencrypt(ctx, db+"."+t)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			jobs = append(jobs, job)
		}
	}
	return jobs, errors.Join(errs...)
}

func (l *Live) unfinishedTables(ctx context.Context, db string) ([]string, error) {
	conn, err := l.connectPrimary(ctx, db)
	if err != nil {
		return nil, err
	}
	defer closeConn(conn)
	rows, err := execParams(ctx, conn, `SELECT to_regclass('pgshield_reencrypt') IS NOT NULL`)
	if err != nil || len(rows) == 0 || string(rows[0][0]) != "t" {
		return nil, err
	}
	rows, err = execParams(ctx, conn, `SELECT DISTINCT table_name FROM pgshield_reencrypt WHERE finished_at IS NULL ORDER BY 1`)
	if err != nil {
		return nil, fmt.Errorf("reading pgshield_reencrypt: %w", err)
	}
	out := make([]string, len(rows))
	for i, r := range rows {
		out[i] = string(r[0])
	}
	return out, nil
}

// runReencrypt is the job: on a connection of its own to the primary,
// under the table's advisory lock, it goes on from the unfinished run
// of pgshield_reencrypt or begins one.
func (l *Live) runReencrypt(ctx context.Context, spec reencryptSpec, report func(JobProgress)) error {
	defer l.markScanStale()
	conn, err := l.connectPrimary(ctx, spec.database)
	if err != nil {
		return fmt.Errorf("connecting to the primary of database %s: %w", spec.database, err)
	}
	defer closeConn(conn)
	rel, found, err := inspectTable(ctx, conn, spec.table)
	if err != nil {
		return fmt.Errorf("reading table %s of database %s from the catalog: %w", spec.table, spec.database, err)
	}
	if err := spec.check(rel, found); err != nil {
		return err
	}
	key := jobKeyOf(rel)
	got, err := tryLock(ctx, conn, key)
	if err != nil {
		return err
	}
	if !got {
		return lockHeld(spec)
	}
	l.setReencrypting(key, true)
	defer l.setReencrypting(key, false)
	if err := simple(ctx, conn, "SET application_name = 'pgshield reencrypt'"); err != nil {
		return err
	}
	if err := ensureProgressTable(ctx, conn); err != nil {
		return err
	}
	r := &reencryptRun{l: l, conn: conn, spec: spec, rel: rel, key: key, report: report}
	return r.run(ctx)
}

// simple runs sql with the simple protocol.
func simple(ctx context.Context, conn *pgconn.PgConn, sql string) error {
	if _, err := conn.Exec(ctx, sql).ReadAll(); err != nil {
		return fmt.Errorf("%s: %w", strings.Fields(sql)[0], err)
	}
	return nil
}

// ensureProgressTable creates pgshield_reencrypt if it is missing; two
// sessions creating it at once make one fail, so it tries twice.
func ensureProgressTable(ctx context.Context, conn *pgconn.PgConn) error {
	var err error
	for range 2 {
		if _, err = conn.Exec(ctx, sqlProgressTable).ReadAll(); err == nil {
			return nil
		}
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || (pe.Code != "23505" && pe.Code != "42P07") {
			break
		}
	}
	return fmt.Errorf("creating pgshield_reencrypt: %w", err)
}

// reencryptRun is one job's work on its connection; its goroutine owns it.
type reencryptRun struct {
	l      *Live
	conn   *pgconn.PgConn
	spec   reencryptSpec
	rel    relation
	key    string
	report func(JobProgress)

	// The run of pgshield_reencrypt, as committed.
	id                     string // its id
	targets                [2]uint32
	last                   int64 // last_pk, when hasLast
	hasLast                bool
	done, rewritten, total int64

	buf []byte // scratch for plaintext
}

// primaries are the primary key ids of keys: randomized, deterministic.
func primaries(keys *crypto.Keyring) [2]uint32 {
	return [2]uint32{keys.Primary(crypto.Randomized), keys.Primary(crypto.Deterministic)}
}

func (r *reencryptRun) where() string {
	return fmt.Sprintf("table %s of database %s", r.spec.table, r.spec.database)
}

func (r *reencryptRun) run(ctx context.Context) error {
	for {
		keys := r.l.srv.Keyring()
		if keys == nil {
			return fmt.Errorf("re-encrypting %s: column encryption is no longer configured", r.where())
		}
		if r.id == "" || primaries(keys) != r.targets {
			// The first time, or the keys were rotated since the run began:
			// what it did is under a key that is no longer primary.
			if err := r.begin(ctx, keys); err != nil {
				return err
			}
			continue
		}
		kc := r.l.keyConfig()
		finished, err := r.batch(ctx, keys, kc.BatchRows)
		if err != nil {
			return err
		}
		if finished {
			r.progress(fmt.Sprintf("done: %s rewritten", plural(int(r.rewritten), "row")))
			return nil
		}
		r.progress(fmt.Sprintf("batch %d of %d, %s rewritten", ceilDiv(r.done, kc.BatchRows),
			max(ceilDiv(r.total, kc.BatchRows), ceilDiv(r.done, kc.BatchRows)), plural(int(r.rewritten), "row")))
		if kc.Pause > 0 {
			t := time.NewTimer(kc.Pause)
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
			}
		}
	}
}

func ceilDiv(n int64, d int) int64 { return (n + int64(d) - 1) / int64(d) }

func (r *reencryptRun) progress(detail string) {
	r.report(JobProgress{Done: r.done, Total: r.total, Unit: "rows", Detail: detail})
}

// begin goes on from the table's unfinished run if it re-encrypts to the
// primary keys of keys; else it finishes that run as superseded and
// begins a new one.
func (r *reencryptRun) begin(ctx context.Context, keys *crypto.Keyring) error {
	targets := primaries(keys)
	fail := func(what string, err error) error {
		return fmt.Errorf("re-encrypting %s: %s pgshield_reencrypt: %w", r.where(), what, err)
	}
	rows, err := execParams(ctx, r.conn, `SELECT id, last_pk, rows_done, rows_rewritten, rows_total, key_ids::text
		FROM pgshield_reencrypt WHERE job_key = $1 AND finished_at IS NULL`, []byte(r.key))
	if err != nil {
		return fail("reading", err)
	}
	if len(rows) == 1 {
		row := rows[0]
		if parseTargets(row[5]) == targets {
			r.id, r.targets, r.hasLast = string(row[0]), targets, row[1] != nil
			if r.hasLast {
				r.last, _ = strconv.ParseInt(string(row[1]), 10, 64)
			}
			r.done, _ = strconv.ParseInt(string(row[2]), 10, 64)
			r.rewritten, _ = strconv.ParseInt(string(row[3]), 10, 64)
			r.total, _ = strconv.ParseInt(string(row[4]), 10, 64)
			r.progress(fmt.Sprintf("resumed after %s done", plural(int(r.done), "row")))
			return nil
		}
		if _, err := execParams(ctx, r.conn, `UPDATE pgshield_reencrypt SET finished_at = now(), updated_at = now(), outcome = $2 WHERE id = $1`,
			row[0], []byte(outcomeSuperseded)); err != nil {
			return fail("updating", err)
		}
	}
	rows, err = execParams(ctx, r.conn, "SELECT count(*) FROM "+r.rel.ident())
	if err != nil {
		return fmt.Errorf("re-encrypting %s: counting its rows: %w", r.where(), err)
	}
	total, _ := strconv.ParseInt(string(rows[0][0]), 10, 64)
	ids := fmt.Sprintf("{%d,%d}", targets[0], targets[1])
	rows, err = execParams(ctx, r.conn, `INSERT INTO pgshield_reencrypt (table_name, job_key, rows_total, key_ids) VALUES ($1, $2, $3, $4) RETURNING id`,
		[]byte(r.spec.table), []byte(r.key), strconv.AppendInt(nil, total, 10), []byte(ids))
	if err != nil {
		return fail("inserting into", err)
	}
	r.id, r.targets, r.hasLast, r.last, r.done, r.rewritten, r.total = string(rows[0][0]), targets, false, 0, 0, 0, total
	r.progress("started")
	return nil
}

// parseTargets reads key_ids ({randomized,deterministic}).
func parseTargets(v []byte) [2]uint32 {
	var out [2]uint32
	parts := strings.Split(strings.Trim(string(v), "{}"), ",")
	for i := 0; i < len(parts) && i < len(out); i++ {
		n, _ := strconv.ParseUint(parts[i], 10, 32)
		out[i] = uint32(n)
	}
	return out
}

// batch re-encrypts the next n rows in one transaction, with the progress
// of the run; finished says it read the last rows of the table.
func (r *reencryptRun) batch(ctx context.Context, keys *crypto.Keyring, n int) (finished bool, err error) {
	if err := simple(ctx, r.conn, "BEGIN"); err != nil {
		return false, fmt.Errorf("re-encrypting %s: %w", r.where(), err)
	}
	committed := false
	defer func() {
		if !committed {
			r.rollback()
		}
	}()
	cols := make([]string, len(r.spec.columns))
	for i, c := range r.spec.columns {
		cols[i] = pgx.Identifier{c.name}.Sanitize()
	}
	pk := pgx.Identifier{r.rel.pk}.Sanitize()
	sel := "SELECT " + pk + ", " + strings.Join(cols, ", ") + " FROM " + r.rel.ident()
	limit := strconv.AppendInt(nil, int64(n), 10)
	var rows [][][]byte
	if r.hasLast {
		rows, err = execParams(ctx, r.conn, sel+" WHERE "+pk+" > $1 ORDER BY "+pk+" LIMIT $2 FOR UPDATE",
			strconv.AppendInt(nil, r.last, 10), limit)
	} else {
		rows, err = execParams(ctx, r.conn, sel+" ORDER BY "+pk+" LIMIT $1 FOR UPDATE", limit)
	}
	if err != nil {
		return false, fmt.Errorf("re-encrypting %s: reading a batch: %w", r.where(), err)
	}
	var pks [][]byte
	vals := make([][][]byte, len(cols))
	last := r.last
	for _, row := range rows {
		if last, err = strconv.ParseInt(string(row[0]), 10, 64); err != nil {
			return false, fmt.Errorf("re-encrypting %s: primary key %s is not an integer", r.where(), r.rel.pk)
		}
		changed := false
		next := make([][]byte, len(cols))
		for i, c := range r.spec.columns {
			var ch bool
			if next[i], ch, err = r.rewrite(keys, c, row[1+i], last); err != nil {
				return false, err
			}
			changed = changed || ch
		}
		if changed {
			pks = append(pks, row[0])
			for i := range cols {
				vals[i] = append(vals[i], next[i])
			}
		}
	}
	if len(pks) > 0 {
		var sets, arrays, names []string
		args := [][]byte{textArray(pks)}
		for i, c := range cols {
			sets = append(sets, fmt.Sprintf("%s = u.v%d", c, i+1))
			arrays = append(arrays, fmt.Sprintf("$%d::text[]", i+2))
			names = append(names, fmt.Sprintf("v%d", i+1))
			args = append(args, textArray(vals[i]))
		}
		res := r.conn.ExecParams(ctx, "UPDATE "+r.rel.ident()+" AS t SET "+strings.Join(sets, ", ")+
			" FROM unnest($1::bigint[], "+strings.Join(arrays, ", ")+") AS u(k, "+strings.Join(names, ", ")+") WHERE t."+pk+" = u.k",
			args, nil, nil, nil).Read()
		if res.Err != nil {
			return false, fmt.Errorf("re-encrypting %s: writing a batch: %w", r.where(), res.Err)
		}
		if got := res.CommandTag.RowsAffected(); got != int64(len(pks)) {
			return false, fmt.Errorf("re-encrypting %s: a batch rewrote %d rows, not the %d it read", r.where(), got, len(pks))
		}
	}
	finished = len(rows) < n
	if len(rows) > 0 {
		if _, err := execParams(ctx, r.conn, `UPDATE pgshield_reencrypt SET last_pk = $2, rows_done = rows_done + $3,
			rows_rewritten = rows_rewritten + $4, updated_at = now() WHERE id = $1`,
			[]byte(r.id), strconv.AppendInt(nil, last, 10), strconv.AppendInt(nil, int64(len(rows)), 10),
			strconv.AppendInt(nil, int64(len(pks)), 10)); err != nil {
			return false, fmt.Errorf("re-encrypting %s: recording the progress: %w", r.where(), err)
		}
	}
	if finished {
		if _, err := execParams(ctx, r.conn, `UPDATE pgshield_reencrypt SET finished_at = now(), updated_at = now(), outcome = $2 WHERE id = $1`,
			[]byte(r.id), []byte(outcomeDone)); err != nil {
			return false, fmt.Errorf("re-encrypting %s: recording the end: %w", r.where(), err)
		}
	}
	res, err := r.conn.Exec(ctx, "COMMIT").ReadAll()
	if err != nil {
		return false, fmt.Errorf("re-encrypting %s: COMMIT: %w", r.where(), err)
	}
	if len(res) != 1 || res[0].CommandTag.String() != "COMMIT" {
		return false, fmt.Errorf("re-encrypting %s: the batch's transaction did not commit", r.where())
	}
	committed = true
	if len(rows) > 0 {
		r.last, r.hasLast = last, true
	}
	r.done += int64(len(rows))
	r.rewritten += int64(len(pks))
	return finished, nil
}

// rewrite returns the stored form of v, a value of column c in the row
// with primary key pk, under the primary key of the column's kind, and
// whether that is not v. A value already under it and NULL stay as they
// are; one that is not a ciphertext is plaintext, encrypted as it is.
func (r *reencryptRun) rewrite(keys *crypto.Keyring, c reencryptColumn, v []byte, pk int64) ([]byte, bool, error) {
	if v == nil {
		return nil, false, nil
	}
	want := r.targets[0]
	if c.det {
		want = r.targets[1]
	}
	if id, ok := crypto.KeyID(v); ok && id == want {
		return v, false, nil
	}
	plain := v
	if crypto.IsCiphertext(v) {
		p, _, err := keys.Decrypt(c.ad, v, r.buf[:0])
		if err != nil {
			return nil, false, fmt.Errorf("re-encrypting %s: the value of column %s in the row with %s = %d does not decrypt: %w",
				r.where(), c.name, r.rel.pk, pk, err)
		}
		plain, r.buf = p, p[:0]
	}
	var out []byte
	var err error
	if c.det {
		out, err = keys.EncryptDeterministic(c.ad, plain, nil)
	} else {
		out, err = keys.Encrypt(c.ad, plain, nil)
	}
	clear(r.buf[:cap(r.buf)])
	if err != nil {
		return nil, false, fmt.Errorf("re-encrypting %s: column %s in the row with %s = %d: %w", r.where(), c.name, r.rel.pk, pk, err)
	}
	return out, true, nil
}

// rollback ends the batch's transaction, unless the connection is gone
// (a cancelled statement closes it, and the server rolls back).
func (r *reencryptRun) rollback() {
	if r.conn.IsClosed() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, _ = r.conn.Exec(ctx, "ROLLBACK").ReadAll()
}

// textArray is vals as a PostgreSQL array literal, each element quoted
// (nil is NULL).
func textArray(vals [][]byte) []byte {
	n := 2
	for _, v := range vals {
		n += len(v) + 3
	}
	b := make([]byte, 0, n)
	b = append(b, '{')
	for i, v := range vals {
		if i > 0 {
			b = append(b, ',')
		}
		if v == nil {
			b = append(b, "NULL"...)
			continue
		}
		b = append(b, '"')
		for _, c := range v {
			if c == '"' || c == '\\' {
				b = append(b, '\\')
			}
			b = append(b, c)
		}
		b = append(b, '"')
	}
	return append(b, '}')
}

// The console's side.

// reencrypt is REENCRYPT <table>.
func (c *Console) reencrypt(ctx context.Context, args []token) (*answer, error) {
	const tag = "REENCRYPT"
	if _, err := c.jobRegistry(tag); err != nil {
		return nil, err
	}
	job, err := c.src.Reencrypt(ctx, args[0].text)
	if err != nil {
		return nil, sourceError(tag, err)
	}
	return c.startJob(tag, "reencrypt", job.Target(), job.Run)
}

// ResumeJobs starts again, as jobs, the re-encryptions the databases
// record as unfinished (pgshield_reencrypt): a pgshield that stopped, or
// died, in the middle of one goes on with it at its next start. It
// returns the ids of the jobs it started; what it could not resume is
// logged and returned. cmd/pgshield calls it once, after Serve.
func (c *Console) ResumeJobs(ctx context.Context) ([]int64, error) {
	if c.jobs == nil {
		return nil, nil
	}
	// Bounds finding them, not the jobs, which run under the registry.
	ctx, cancel := context.WithTimeout(ctx, resumeTimeout)
	defer cancel()
	jobs, err := c.src.Unfinished(ctx)
	if err != nil {
		c.log.Warn("unfinished re-encryptions not resumed", zap.Error(err))
	}
	var ids []int64
	for _, j := range jobs {
		id, serr := c.jobs.Start("reencrypt", j.Target(), j.Run)
		if serr != nil {
			c.log.Warn("unfinished re-encryption not resumed", zap.String("target", j.Target()), zap.Error(serr))
			err = errors.Join(err, serr)
			continue
		}
		c.log.Info("unfinished re-encryption resumed", zap.Int64("job", id), zap.String("target", j.Target()))
		ids = append(ids, id)
	}
	return ids, err
}
