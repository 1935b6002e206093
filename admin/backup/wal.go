package backup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"
)

// WALStatus is the state of WAL archiving.
type WALStatus struct {
	// Running: RunWAL runs and its pg_receivewal is up.
	Running bool
	// Source is the server pg_receivewal streams from.
	Source string
	// LastSegment is the newest segment in the repository (from this
	// process, or found there when RunWAL started), and LastArchived when
	// it got there.
	LastSegment  string
	LastArchived time.Time
	// Lag is how long the oldest WAL the primary wrote and the repository
	// does not have yet has been waiting (within a check interval); 0 when
	// the repository has everything, or when it is not known.
	Lag time.Duration
	// Err is the last problem, "" when there is none.
	Err string
}

// walState is RunWAL's state; Manager.mu guards it.
type walState struct {
	running      bool        // RunWAL runs
	receiving    bool        // pg_receivewal runs
	proc         *os.Process // pg_receivewal's
	source       string
	lastSegment  string
	lastArchived time.Time
	pendingSince time.Time // when WAL beyond lastSegment was first seen (see checkPending)
	lastIdle     time.Time // the last check that saw no such WAL
	lastSwitch   time.Time // the last forced switch
	recvErr      string
	uploadErr    string
	switchErr    string
}

// WALStatus reports the state of WAL archiving.
func (m *Manager) WALStatus() WALStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	w := &m.wal
	s := WALStatus{
		Running:      w.running && w.receiving,
		Source:       w.source,
		LastSegment:  w.lastSegment,
		LastArchived: w.lastArchived,
	}
	if !w.pendingSince.IsZero() {
		s.Lag = max(0, m.now().Sub(w.pendingSince))
	}
	var errs []string
	for _, e := range []string{w.recvErr, w.uploadErr, w.switchErr} {
		if e != "" {
			errs = append(errs, e)
		}
	}
	s.Err = strings.Join(errs, "; ")
	return s
}

// errSourceChanged ends a pg_receivewal when Config.Source names another
// server.
var errSourceChanged = errors.New("the primary changed")

// RunWAL archives WAL until ctx ends: pg_receivewal streams from Source()
// with the replication slot (created when missing) into StagingDir; each
// finished segment (never a .partial) and timeline history file is sealed,
// uploaded and then removed. pg_receivewal is restarted when it dies and
// when Source names another server (a failover). When written WAL has
// waited ArchiveInterval without reaching the repository, RunWAL forces a
// segment switch, which bounds the RPO. It returns nil when ctx ends, after
// uploading what pg_receivewal finished.
func (m *Manager) RunWAL(ctx context.Context) error {
	if m.cfg.Source == nil {
		return errors.New("backup: WAL archiving needs a source")
	}
	if m.cfg.StagingDir == "" {
		return errors.New("backup: WAL archiving needs a staging directory")
	}
	m.mu.Lock()
	if m.wal.running {
		m.mu.Unlock()
		return errors.New("backup: WAL archiving runs already")
	}
	m.wal.running = true
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		m.wal.running, m.wal.receiving, m.wal.proc = false, false, nil
		m.wal.pendingSince = time.Time{}
		m.mu.Unlock()
	}()
	staging, err := m.prepareStaging()
	if err != nil {
		return err
	}
	m.findLastArchived(ctx)

	stop := make(chan struct{})
	uploaded := make(chan struct{})
	go func() {
		defer close(uploaded)
		m.uploadLoop(ctx, staging, stop)
	}()
	m.receiveLoop(ctx, staging)
	close(stop)
	<-uploaded
	// What pg_receivewal finished as it stopped.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	err = m.uploadReady(fctx, staging)
	if err == nil {
		err = m.uploadStalePartials(fctx, staging)
	}
	if err != nil {
		m.log.Warn("WAL archiving: the last segments were not uploaded; the next run uploads them", zap.Error(err))
	}
	return nil
}

func (m *Manager) prepareStaging() (string, error) {
	dir, err := filepath.Abs(m.cfg.StagingDir)
	if err != nil {
		return "", fmt.Errorf("backup: staging directory: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("backup: staging directory: %w", err)
	}
	if err := m.as.chown(dir); err != nil {
		return "", fmt.Errorf("backup: staging directory: %w", err)
	}
	changed, err := m.as.makeTraversable(dir)
	if err != nil {
		return "", fmt.Errorf("backup: staging directory: %w", err)
	}
	if len(changed) > 0 {
		m.log.Info("let the postgres OS user reach the WAL staging directory", zap.Strings("dirs", changed))
	}
	return dir, nil
}

// findLastArchived starts the status from the repository's newest segment.
func (m *Manager) findLastArchived(ctx context.Context) {
	objs, err := m.cfg.Repo.List(ctx, walPrefix(m.cfg.Cluster))
	if err != nil {
		m.log.Warn("WAL archiving: listing the archive", zap.Error(err))
		return
	}
	var last Object
	for _, o := range objs {
		if n := path.Base(o.Name); segmentPattern.MatchString(n) && (last.Name == "" || compareSegments(n, path.Base(last.Name)) > 0) {
			last = o
		}
	}
	if last.Name != "" {
		m.mu.Lock()
		if m.wal.lastSegment == "" || compareSegments(path.Base(last.Name), m.wal.lastSegment) > 0 {
			m.wal.lastSegment, m.wal.lastArchived = path.Base(last.Name), last.Modified
		}
		m.mu.Unlock()
	}
}

// compareSegments orders segment names by position, then timeline.
func compareSegments(a, b string) int {
	if c := strings.Compare(a[8:], b[8:]); c != 0 {
		return c
	}
	return strings.Compare(a[:8], b[:8])
}

// receiveLoop runs pg_receivewal until ctx ends, again and again.
func (m *Manager) receiveLoop(ctx context.Context, staging string) {
	const maxBackoff = 30 * time.Second
	backoff := time.Second
	for ctx.Err() == nil {
		src, err := m.source(ctx)
		var segSize int64
		if err == nil {
			segSize, err = m.ensureSlot(ctx, src)
		}
		if err == nil {
			err = m.dropPaddingPartials(staging, segSize)
		}
		if err == nil {
			err = m.uploadStalePartials(ctx, staging)
		}
		if err == nil {
			began := time.Now()
			err = m.receive(ctx, staging, src)
			if time.Since(began) > time.Minute {
				backoff = time.Second
			}
		}
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errSourceChanged) {
			continue
		}
		m.mu.Lock()
		m.wal.recvErr = fmt.Sprintf("WAL archiving: %v", err)
		m.mu.Unlock()
		m.log.Warn("WAL archiving: pg_receivewal stopped; restarting it", zap.Error(err), zap.Duration("in", backoff))
		m.pause(ctx, backoff, src)
		backoff = min(2*backoff, maxBackoff)
	}
}

// pause waits d, or until ctx ends or Source names another server than
// last: a failover need not wait for the backoff.
func (m *Manager) pause(ctx context.Context, d time.Duration, last Source) {
	deadline := time.Now().Add(d)
	for {
		step := min(time.Until(deadline), time.Second)
		if step <= 0 {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(step):
		}
		if cur, err := m.cfg.Source(ctx); err == nil && last.Host != "" && !cur.same(last) {
			return
		}
	}
}

// ensureSlot creates the archiver's physical replication slot on src when
// it has none, reserving WAL from now on. It returns the server's
// wal_segment_size.
func (m *Manager) ensureSlot(ctx context.Context, src Source) (int64, error) {
	conn, err := src.connect(ctx)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	var exists bool
	var segSize int64
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = $1),
		(SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size')`, m.cfg.Slot).Scan(&exists, &segSize); err != nil {
		return 0, fmt.Errorf("looking for replication slot %s on %s: %w", m.cfg.Slot, src.addr(), err)
	}
	if exists {
		return segSize, nil
	}
	_, err = conn.Exec(ctx, "SELECT pg_create_physical_replication_slot($1, true)", m.cfg.Slot)
	var pgErr *pgconn.PgError
	if err != nil && !(errors.As(err, &pgErr) && pgErr.Code == "42710") { // duplicate_object: made meanwhile
		return 0, fmt.Errorf("creating replication slot %s on %s (the role needs REPLICATION): %w", m.cfg.Slot, src.addr(), err)
	}
	if err == nil {
		m.log.Info("WAL archiving: created the replication slot", zap.String("slot", m.cfg.Slot), zap.String("source", src.addr()))
	}
	return segSize, nil
}

// dropPaddingPartials removes the .partial segments that are neither
// empty nor whole. pg_receivewal fills a new segment with zeros before it
// writes WAL into it, so such a file is one it died filling: it holds no
// WAL, and pg_receivewal refuses to start beside it.
func (m *Manager) dropPaddingPartials(staging string, segSize int64) error {
	entries, err := os.ReadDir(staging)
	if err != nil {
		return fmt.Errorf("reading the staging directory: %w", err)
	}
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".partial")
		if !ok || !segmentPattern.MatchString(name) || !e.Type().IsRegular() {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue
		}
		if size := info.Size(); size != 0 && size != segSize {
			if err := os.Remove(filepath.Join(staging, e.Name())); err != nil {
				return fmt.Errorf("removing the half-made %s: %w", e.Name(), err)
			}
			m.log.Warn("WAL archiving: removed a segment pg_receivewal died making (no WAL in it yet)",
				zap.String("file", e.Name()), zap.Int64("bytes", size))
		}
	}
	return nil
}

// receive runs one pg_receivewal against src until it exits, ctx ends or
// the primary changes.
func (m *Manager) receive(ctx context.Context, staging string, src Source) error {
	rctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// --no-loop: a lost connection ends it, and the loop asks Source
	// again, which follows a failover.
	cmd := m.as.command(rctx, "", program(m.bin, "pg_receivewal"), src.env(),
		"-D", staging, "-S", m.cfg.Slot, "-d", src.conninfo(false), "--no-loop")
	stderr := newTailBuffer(8 << 10)
	cmd.Stdout, cmd.Stderr = stderr, stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting pg_receivewal: %w", err)
	}
	m.mu.Lock()
	m.wal.receiving, m.wal.proc, m.wal.source = true, cmd.Process, src.addr()
	m.mu.Unlock()
	m.log.Info("WAL archiving: pg_receivewal started", zap.String("source", src.addr()), zap.String("slot", m.cfg.Slot))
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		m.watch(rctx, src, cancel)
	}()
	err := cmd.Wait()
	cancel(nil)
	<-watched
	m.mu.Lock()
	m.wal.receiving, m.wal.proc = false, nil
	m.wal.pendingSince = time.Time{}
	m.mu.Unlock()
	if errors.Is(context.Cause(rctx), errSourceChanged) {
		return errSourceChanged
	}
	if ctx.Err() != nil {
		return nil
	}
	if err == nil {
		err = errors.New("exited")
	}
	return fmt.Errorf("pg_receivewal from %s: %w%s", src.addr(), err, outputTail(stderr.String()))
}

// checkInterval is how often a running pg_receivewal's source is checked.
func (m *Manager) checkInterval() time.Duration {
	if m.cfg.ArchiveInterval < 0 {
		return 5 * time.Second
	}
	return min(max(m.cfg.ArchiveInterval/4, 100*time.Millisecond), 5*time.Second)
}

// watch checks, while pg_receivewal runs, whether Source still names src
// (else it ends the run), and forces segment switches (checkPending).
func (m *Manager) watch(ctx context.Context, src Source, cancel context.CancelCauseFunc) {
	t := time.NewTicker(m.checkInterval())
	defer t.Stop()
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		m.mu.Lock()
		m.wal.recvErr = "" // it runs
		m.mu.Unlock()
		if cur, err := m.cfg.Source(ctx); err == nil && cur.Host != "" && !cur.same(src) {
			m.log.Info("WAL archiving: the primary changed; following it", zap.String("from", src.addr()), zap.String("to", cur.addr()))
			cancel(errSourceChanged)
			return
		}
		if conn == nil {
			var err error
			if conn, err = src.connect(ctx); err != nil {
				conn = nil
				continue
			}
		}
		if err := m.checkPending(ctx, conn); err != nil {
			conn.Close(context.Background())
			conn = nil
		}
	}
}

// checkPending compares the primary's WAL position with the end of the
// newest archived segment: WAL beyond it is pending, and once it has been
// pending ArchiveInterval, a pg_switch_wal() finishes its segment so that
// pg_receivewal closes it and it is uploaded. An idle server is switched
// at most once an interval (checkpoints write a little WAL). It returns an
// error only when the connection failed.
func (m *Manager) checkPending(ctx context.Context, conn *pgx.Conn) error {
	var inRecovery bool
	var current *string
	var segSize int64
	err := conn.QueryRow(ctx, `SELECT pg_is_in_recovery(),
		CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END,
		(SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size')`).Scan(&inRecovery, &current, &segSize)
	if err != nil {
		return err
	}
	if inRecovery || current == nil || segSize <= 0 {
		return nil // a standby: a failover is under way
	}
	pos, err := parseLSN(*current)
	if err != nil {
		return nil
	}
	now := m.now()
	m.mu.Lock()
	w := &m.wal
	var end lsn
	if _, segno, ok := parseSegment(w.lastSegment, segSize); ok {
		end = lsn((segno + 1) * uint64(segSize))
	}
	switch {
	case pos <= end:
		w.pendingSince, w.lastIdle = time.Time{}, now
	case w.pendingSince.IsZero():
		// Written since the last look, or since the last upload.
		w.pendingSince = now
		if last := maxTime(w.lastIdle, w.lastArchived); !last.IsZero() && last.Before(now) {
			w.pendingSince = last
		}
	}
	due := !w.pendingSince.IsZero() && m.cfg.ArchiveInterval > 0 &&
		now.Sub(w.pendingSince) >= m.cfg.ArchiveInterval && now.Sub(w.lastSwitch) >= m.cfg.ArchiveInterval
	if due {
		w.lastSwitch = now
	}
	m.mu.Unlock()
	if !due {
		return nil
	}
	var seg string
	err = conn.QueryRow(ctx, "SELECT pg_walfile_name(pg_switch_wal())").Scan(&seg)
	var pgErr *pgconn.PgError
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case errors.As(err, &pgErr):
		m.wal.switchErr = fmt.Sprintf("WAL archiving: pg_switch_wal() failed, so WAL waits until its segment fills (grant the role EXECUTE on pg_switch_wal(), or set archive_timeout on the server): %v", err)
		return nil
	case err != nil:
		return err
	}
	m.wal.switchErr = ""
	m.log.Debug("WAL archiving: forced a segment switch", zap.String("segment", seg))
	return nil
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// uploadInterval is how often the staging directory is looked at.
const uploadInterval = 500 * time.Millisecond

func (m *Manager) uploadLoop(ctx context.Context, staging string, stop <-chan struct{}) {
	t := time.NewTicker(uploadInterval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := m.uploadReady(ctx, staging)
		m.mu.Lock()
		m.wal.uploadErr = ""
		if err != nil && ctx.Err() == nil {
			m.wal.uploadErr = fmt.Sprintf("WAL archiving: %v", err)
		}
		m.mu.Unlock()
		if err != nil && ctx.Err() == nil {
			m.log.Warn("WAL archiving: upload failed; retrying", zap.Error(err))
		}
	}
}

// uploadReady uploads the staging directory's finished files, history
// files first and segments in order, removing each once stored.
func (m *Manager) uploadReady(ctx context.Context, staging string) error {
	entries, err := os.ReadDir(staging)
	if err != nil {
		return fmt.Errorf("reading the staging directory: %w", err)
	}
	var hist, segs []string
	for _, e := range entries {
		switch n := e.Name(); {
		case !e.Type().IsRegular():
		case historyPattern.MatchString(n):
			hist = append(hist, n)
		case segmentPattern.MatchString(n):
			segs = append(segs, n)
		}
	}
	slices.Sort(hist)
	slices.SortFunc(segs, compareSegments)
	for _, n := range append(hist, segs...) {
		if err := m.uploadWAL(ctx, filepath.Join(staging, n)); err != nil {
			return err
		}
	}
	return nil
}

// uploadStalePartials moves the .partial segments of a timeline the
// archive has left (a failover) into the repository, as <name>.partial:
// one whose timeline is older than the newest archived segment's, at or
// behind its position. Its WAL up to the switch is in the new timeline's
// segment; the rest never reached the new primary, and is kept for
// forensics, not for recovery (wal-fetch never serves it). It runs only
// while no pg_receivewal does: a restarted one may write behind the
// newest position again (from its slot), and a file it writes must not go.
func (m *Manager) uploadStalePartials(ctx context.Context, staging string) error {
	m.mu.Lock()
	last := m.wal.lastSegment
	m.mu.Unlock()
	if last == "" {
		return nil
	}
	entries, err := os.ReadDir(staging)
	if err != nil {
		return fmt.Errorf("reading the staging directory: %w", err)
	}
	for _, e := range entries {
		seg, ok := strings.CutSuffix(e.Name(), ".partial")
		if !ok || !segmentPattern.MatchString(seg) || !e.Type().IsRegular() || seg[:8] >= last[:8] || seg[8:] > last[8:] {
			continue
		}
		file := filepath.Join(staging, e.Name())
		f, err := os.Open(file)
		if err != nil {
			continue // gone meanwhile
		}
		_, err = m.putSealed(ctx, walObject(m.cfg.Cluster, e.Name()), func(w io.Writer) error {
			_, err := io.Copy(w, f)
			return err
		})
		f.Close()
		if err != nil {
			return err
		}
		if err := os.Remove(file); err != nil {
			return fmt.Errorf("removing the uploaded %s: %w", e.Name(), err)
		}
		m.log.Info("WAL archiving: kept an abandoned timeline's partial segment in the repository", zap.String("file", e.Name()))
	}
	return nil
}

func (m *Manager) uploadWAL(ctx context.Context, file string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	name := filepath.Base(file)
	if _, err := m.putSealed(ctx, walObject(m.cfg.Cluster, name), func(w io.Writer) error {
		_, err := io.Copy(w, f)
		return err
	}); err != nil {
		return err
	}
	if err := os.Remove(file); err != nil {
		return fmt.Errorf("removing the uploaded %s: %w", name, err)
	}
	m.log.Debug("WAL archiving: uploaded", zap.String("file", name))
	if segmentPattern.MatchString(name) {
		m.mu.Lock()
		if m.wal.lastSegment == "" || compareSegments(name, m.wal.lastSegment) >= 0 {
			m.wal.lastSegment = name
		}
		m.wal.lastArchived = m.now()
		m.wal.pendingSince = time.Time{}
		m.mu.Unlock()
	}
	return nil
}

// SwitchWAL forces a segment switch on the primary (pg_switch_wal()) and
// waits until that segment is in the repository (WAL archiving, here or
// in another pgshield, uploads it). It returns the segment's name. After
// it, everything committed before the call can be restored.
func (m *Manager) SwitchWAL(ctx context.Context) (string, error) {
	src, err := m.source(ctx)
	if err != nil {
		return "", err
	}
	conn, err := src.connect(ctx)
	if err != nil {
		return "", fmt.Errorf("backup: %w", err)
	}
	var seg string
	err = conn.QueryRow(ctx, "SELECT pg_walfile_name(pg_switch_wal())").Scan(&seg)
	conn.Close(context.Background())
	if err != nil {
		return "", fmt.Errorf("backup: pg_switch_wal() on %s: %w", src.addr(), err)
	}
	if err := m.waitArchived(ctx, seg); err != nil {
		return "", err
	}
	return seg, nil
}

// waitArchived waits until the repository has the segment seg.
func (m *Manager) waitArchived(ctx context.Context, seg string) error {
	ctx, cancel := context.WithTimeout(ctx, m.cfg.WALWait)
	defer cancel()
	for {
		ok, err := hasObject(ctx, m.cfg.Repo, walObject(m.cfg.Cluster, seg))
		if ok {
			return nil
		}
		if err == nil {
			err = errors.New("not there yet")
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("backup: WAL segment %s did not reach the repository within %v (is WAL archiving running?): %w", seg, m.cfg.WALWait, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func hasObject(ctx context.Context, repo Repository, name string) (bool, error) {
	rc, err := repo.Get(ctx, name)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	rc.Close()
	return true, nil
}

// WALFetch is restore_command's body (pgshield wal-fetch): it writes the
// archived segment or history file name, opened, to path. A file the
// archive does not have is an error that matches ErrNotFound (recovery
// then tries pg_wal, or ends); any other error should abort the recovery.
func WALFetch(ctx context.Context, repo Repository, key Key, cluster, name, path string) error {
	if err := checkCluster(cluster); err != nil {
		return err
	}
	if !walFileName(name) {
		// Recovery asks for what it hopes for (a .partial, a .backup file):
		// the archive holds segments and history files only.
		return fmt.Errorf("backup: %s: %w", name, ErrNotFound)
	}
	obj := walObject(cluster, name)
	rc, err := repo.Get(ctx, obj)
	if err != nil {
		return err
	}
	defer rc.Close()
	pt, err := key.Open(rc, obj)
	if err != nil {
		return err
	}
	defer pt.Close()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	_, err = io.Copy(f, pt)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("backup: fetching %s: %w", obj, err)
	}
	return nil
}
