package backup

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"time"

	"go.uber.org/zap"
)

// serverInfo is what a backup records of the server it is taken from.
type serverInfo struct {
	version string
	segSize int64
	size    int64 // the databases' size, an estimate of the backup's; 0 unknown
}

func readServerInfo(ctx context.Context, src Source) (serverInfo, error) {
	conn, err := src.connect(ctx)
	if err != nil {
		return serverInfo{}, err
	}
	defer conn.Close(context.Background())
	var info serverInfo
	err = conn.QueryRow(ctx, `SELECT current_setting('server_version'),
		(SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size')`).Scan(&info.version, &info.segSize)
	if err != nil {
		return serverInfo{}, fmt.Errorf("reading the server's version on %s: %w", src.addr(), err)
	}
	if info.segSize <= 0 || segmentsPerID(info.segSize)*uint64(info.segSize) != 0x100000000 {
		return serverInfo{}, fmt.Errorf("the server on %s has an unexpected wal_segment_size (%d)", src.addr(), info.segSize)
	}
	// Only for progress: it needs CONNECT on every database, and is
	// unknown without.
	var size *int64
	if conn.QueryRow(ctx, `SELECT sum(pg_database_size(oid))::bigint FROM pg_database`).Scan(&size) == nil && size != nil {
		info.size = *size
	}
	return info, nil
}

// BackupFull takes a full backup: pg_basebackup streams one tar of the
// cluster (with -X fetch, the WAL that makes it consistent inside it),
// which is sealed (compressed and encrypted) while it uploads; nothing is
// kept locally. PostgreSQL's backup_manifest is stored as an object of its
// own too, and the backup's Manifest last: a backup killed before that has
// none, and List does not show it.
func (m *Manager) BackupFull(ctx context.Context, p Progress) (Manifest, error) {
	if err := m.acquire(ctx); err != nil {
		return Manifest{}, err
	}
	defer m.release()
	src, err := m.source(ctx)
	if err != nil {
		return Manifest{}, err
	}
	info, err := readServerInfo(ctx, src)
	if err != nil {
		return Manifest{}, fmt.Errorf("backup: full backup: %w", err)
	}
	started := m.now()
	id, err := m.begin(ctx, KindFull, started)
	if err != nil {
		return Manifest{}, err
	}
	defer m.setRunning(id, false)
	log := m.log.With(zap.String("backup", id))
	log.Info("full backup started", zap.String("source", src.addr()), zap.String("pg_version", info.version))
	man, err := m.fullBackup(ctx, src, info, id, started, p)
	if err != nil {
		err = withCtx(ctx, err)
		log.Error("full backup failed", zap.Error(err))
		return Manifest{}, fmt.Errorf("backup: full backup %s: %w", id, err)
	}
	log.Info("full backup finished", zap.Int64("bytes", man.Size), zap.String("start_lsn", man.StartLSN),
		zap.String("stop_lsn", man.StopLSN), zap.Duration("took", man.Finished.Sub(man.Started)))
	return man, nil
}

// withCtx makes err say (and match) the context's end when the context
// has ended: a killed program's error would hide it.
func withCtx(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		return fmt.Errorf("%w: %w", cerr, err)
	}
	return err
}

func (m *Manager) fullBackup(ctx context.Context, src Source, info serverInfo, id string, started time.Time, p Progress) (Manifest, error) {
	pw := &progressWriter{p: p, total: info.size, detail: "pg_basebackup: streaming the cluster"}
	p.report(0, info.size, pw.detail)
	var pgman []byte
	base, err := m.putSealed(ctx, backupObject(m.cfg.Cluster, id, baseFile), func(w io.Writer) error {
		var err error
		pgman, err = m.runBaseBackup(ctx, src, id, w, pw)
		return err
	})
	if err != nil {
		return Manifest{}, err
	}
	ranges, err := parsePGManifest(pgman)
	if err != nil {
		return Manifest{}, err
	}
	pm, err := m.putSealed(ctx, backupObject(m.cfg.Cluster, id, pgManifestFile), func(w io.Writer) error {
		_, err := w.Write(pgman)
		return err
	})
	if err != nil {
		return Manifest{}, err
	}
	first, last := ranges[0], ranges[len(ranges)-1]
	man := Manifest{
		ID: id, Kind: KindFull, Cluster: m.cfg.Cluster,
		Started: started, Finished: m.now(),
		StartLSN: first.StartLSN, StopLSN: last.EndLSN, Timeline: last.Timeline,
		WALSegmentSize: info.segSize, PGVersion: info.version, KeyID: m.cfg.Key.ID,
		Objects: []ObjectRef{base, pm}, Size: base.Size + pm.Size,
	}
	if err := writeManifest(ctx, m.cfg.Repo, man); err != nil {
		return Manifest{}, err
	}
	p.report(pw.done, pw.done, "full backup finished")
	return man, nil
}

// runBaseBackup runs pg_basebackup, writing its tar to w (and counting it
// in pw), and returns the backup_manifest it carries. PostgreSQL 15 cannot
// stream WAL (-X stream) into a tar on stdout; -X fetch can, and puts the
// WAL of the backup into the tar's pg_wal, which makes every full backup
// restorable on its own. The WAL must still be on the server at the
// backup's end: the archiver's slot keeps it when WAL archiving runs, and
// wal_keep_size otherwise. pg_basebackup refuses a cluster with
// tablespaces besides the default ones (they would need one tar each).
func (m *Manager) runBaseBackup(ctx context.Context, src Source, id string, w io.Writer, pw *progressWriter) ([]byte, error) {
	cmd := m.as.command(ctx, "", program(m.bin, "pg_basebackup"), src.env(),
		"-d", src.conninfo(false), "-D", "-", "-Ft", "-X", "fetch", "-c", "fast", "--no-sync", "-l", "pgshield "+id)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("pg_basebackup: %w", err)
	}
	stderr := newTailBuffer(16 << 10)
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting pg_basebackup: %w", err)
	}
	scan := newTarScanner()
	_, copyErr := io.Copy(io.MultiWriter(w, scan, pw), stdout)
	if copyErr != nil {
		_ = cmd.Process.Kill()
	}
	waitErr := cmd.Wait()
	pgman, scanErr := scan.finish()
	switch {
	case copyErr != nil:
		return nil, fmt.Errorf("streaming pg_basebackup's output: %w", copyErr)
	case waitErr != nil:
		return nil, fmt.Errorf("pg_basebackup from %s: %w%s", src.addr(), waitErr, outputTail(stderr.String()))
	case scanErr != nil:
		return nil, fmt.Errorf("pg_basebackup's tar: %w", scanErr)
	case pgman == nil:
		return nil, errors.New("pg_basebackup's tar has no backup_manifest (PostgreSQL 13 or later makes one)")
	}
	return pgman, nil
}

// tarScanner reads a tar as it is written through it, for the
// backup_manifest member that pg_basebackup puts at its end.
type tarScanner struct {
	pw       *io.PipeWriter
	done     chan struct{}
	manifest []byte
	err      error
}

// maxPGManifest bounds the backup_manifest kept in memory (about 200
// bytes a file: a million files fit).
const maxPGManifest = 1 << 30

func newTarScanner() *tarScanner {
	pr, pw := io.Pipe()
	s := &tarScanner{pw: pw, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		s.manifest, s.err = scanTar(pr)
		if s.err != nil {
			pr.CloseWithError(s.err) // the writer fails, and the copy stops
			return
		}
		// The padding after the archive's end.
		_, _ = io.Copy(io.Discard, pr)
	}()
	return s
}

func (s *tarScanner) Write(p []byte) (int, error) { return s.pw.Write(p) }

func (s *tarScanner) finish() ([]byte, error) {
	s.pw.Close()
	<-s.done
	return s.manifest, s.err
}

func scanTar(r io.Reader) ([]byte, error) {
	tr := tar.NewReader(r)
	var manifest []byte
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return manifest, nil
		}
		if err != nil {
			return nil, err
		}
		name := strings.TrimPrefix(path.Clean(h.Name), "./")
		switch {
		case name == pgManifestFile && h.Typeflag == tar.TypeReg:
			if h.Size > maxPGManifest {
				return nil, fmt.Errorf("backup_manifest is %d bytes, more than %d", h.Size, maxPGManifest)
			}
			if manifest, err = io.ReadAll(tr); err != nil {
				return nil, err
			}
		case strings.HasPrefix(name, "pg_tblspc/") && h.Typeflag == tar.TypeSymlink:
			return nil, fmt.Errorf("the cluster has a tablespace (%s); backups support the default tablespaces only", name)
		}
	}
}

// walRange is one of a backup_manifest's WAL-Ranges.
type walRange struct {
	Timeline int    `json:"Timeline"`
	StartLSN string `json:"Start-LSN"`
	EndLSN   string `json:"End-LSN"`
}

func parsePGManifest(data []byte) ([]walRange, error) {
	var pm struct {
		Version int        `json:"PostgreSQL-Backup-Manifest-Version"`
		Ranges  []walRange `json:"WAL-Ranges"`
	}
	if err := json.Unmarshal(data, &pm); err != nil {
		return nil, fmt.Errorf("reading backup_manifest: %w", err)
	}
	if pm.Version != 1 || len(pm.Ranges) == 0 {
		return nil, fmt.Errorf("backup_manifest: version %d with %d WAL ranges; want version 1 with a WAL range", pm.Version, len(pm.Ranges))
	}
	for _, r := range pm.Ranges {
		if _, err := parseLSN(r.StartLSN); err != nil {
			return nil, fmt.Errorf("backup_manifest: %w", err)
		}
		if _, err := parseLSN(r.EndLSN); err != nil {
			return nil, fmt.Errorf("backup_manifest: %w", err)
		}
	}
	return pm.Ranges, nil
}

// BackupIncremental records the WAL since the newest backup as a backup of
// its own (Kind incremental, Parent that backup), so that retention and
// restore treat it as a unit: it writes a restore point, forces a segment
// switch so that the range is complete, waits for the segment to reach the
// archive, and stores the range's segments (with the timeline history
// files) as one sealed tar. WAL archiving must have run since the parent.
// PostgreSQL 17's pg_basebackup --incremental (block level) is the later
// path; this works on 15 and 16.
func (m *Manager) BackupIncremental(ctx context.Context, p Progress) (Manifest, error) {
	if err := m.acquire(ctx); err != nil {
		return Manifest{}, err
	}
	defer m.release()
	cat, err := m.catalog(ctx)
	if err != nil {
		return Manifest{}, err
	}
	if len(cat.usable) == 0 {
		return Manifest{}, errors.New("backup: an incremental backup follows another backup: take a full backup first")
	}
	parent := cat.usable[len(cat.usable)-1]
	if _, err := chainOf(cat, parent); err != nil {
		return Manifest{}, fmt.Errorf("backup: incremental backup: %w", err)
	}
	src, err := m.source(ctx)
	if err != nil {
		return Manifest{}, err
	}
	info, err := readServerInfo(ctx, src)
	if err != nil {
		return Manifest{}, fmt.Errorf("backup: incremental backup: %w", err)
	}
	if info.segSize != parent.WALSegmentSize {
		return Manifest{}, fmt.Errorf("backup: incremental backup: wal_segment_size is %d, backup %s has %d: take a full backup", info.segSize, parent.ID, parent.WALSegmentSize)
	}
	started := m.now()
	id, err := m.begin(ctx, KindIncremental, started)
	if err != nil {
		return Manifest{}, err
	}
	defer m.setRunning(id, false)
	log := m.log.With(zap.String("backup", id))
	log.Info("incremental backup started", zap.String("parent", parent.ID))
	man, err := m.incremental(ctx, src, info, parent, id, started, p)
	if err != nil {
		err = withCtx(ctx, err)
		log.Error("incremental backup failed", zap.Error(err))
		return Manifest{}, fmt.Errorf("backup: incremental backup %s: %w", id, err)
	}
	log.Info("incremental backup finished", zap.Int64("bytes", man.Size), zap.String("start_lsn", man.StartLSN), zap.String("stop_lsn", man.StopLSN))
	return man, nil
}

func (m *Manager) incremental(ctx context.Context, src Source, info serverInfo, parent Manifest, id string, started time.Time, p Progress) (Manifest, error) {
	point := "pgshield-" + id
	conn, err := src.connect(ctx)
	if err != nil {
		return Manifest{}, err
	}
	var pointLSN, last string
	err = conn.QueryRow(ctx, "SELECT pg_create_restore_point($1)::text", point).Scan(&pointLSN)
	if err == nil {
		err = conn.QueryRow(ctx, "SELECT pg_walfile_name(pg_switch_wal())").Scan(&last)
	}
	conn.Close(context.Background())
	if err != nil {
		return Manifest{}, fmt.Errorf("restore point and segment switch on %s (the role needs EXECUTE on pg_create_restore_point and pg_switch_wal): %w", src.addr(), err)
	}
	p.report(0, 0, "waiting for WAL segment "+last+" to be archived")
	if err := m.waitArchived(ctx, last); err != nil {
		return Manifest{}, err
	}
	tli, lastSeg, _ := parseSegment(last, info.segSize)
	from, err := parseLSN(parent.StopLSN)
	if err != nil {
		return Manifest{}, fmt.Errorf("backup %s: %w", parent.ID, err)
	}
	firstSeg := segmentOf(from, info.segSize)
	objs, err := m.cfg.Repo.List(ctx, walPrefix(m.cfg.Cluster))
	if err != nil {
		return Manifest{}, err
	}
	var hist []Object
	bySeg := map[uint64][]Object{}
	for _, o := range objs {
		n := path.Base(o.Name)
		if historyPattern.MatchString(n) {
			hist = append(hist, o)
			continue
		}
		if t, segno, ok := parseSegment(n, info.segSize); ok && t <= tli && segno >= firstSeg && segno <= lastSeg {
			bySeg[segno] = append(bySeg[segno], o)
		}
	}
	files := hist
	var total int64
	for s := firstSeg; s <= lastSeg; s++ {
		if len(bySeg[s]) == 0 {
			return Manifest{}, fmt.Errorf("WAL segment %s is not in the repository: WAL archiving has not run since backup %s (take a full backup)",
				segmentName(tli, s, info.segSize), parent.ID)
		}
		files = append(files, bySeg[s]...)
	}
	for _, o := range files {
		total += o.Size
	}
	pw := &progressWriter{p: p, total: total, detail: "storing the WAL since " + parent.ID}
	ref, err := m.putSealed(ctx, backupObject(m.cfg.Cluster, id, walTarFile), func(w io.Writer) error {
		tw := tar.NewWriter(w)
		for _, o := range files {
			if err := m.copyWALInto(ctx, tw, o, info.segSize, pw); err != nil {
				return err
			}
		}
		return tw.Close()
	})
	if err != nil {
		return Manifest{}, err
	}
	man := Manifest{
		ID: id, Kind: KindIncremental, Cluster: m.cfg.Cluster,
		Started: started, Finished: m.now(),
		StartLSN: parent.StopLSN, StopLSN: pointLSN, Timeline: int(tli),
		WALSegmentSize: info.segSize, PGVersion: info.version, KeyID: m.cfg.Key.ID,
		Objects: []ObjectRef{ref}, Size: ref.Size, Parent: parent.ID, RestorePoint: point,
	}
	if err := writeManifest(ctx, m.cfg.Repo, man); err != nil {
		return Manifest{}, err
	}
	p.report(total, total, "incremental backup finished")
	return man, nil
}

// copyWALInto adds the archived WAL file o, opened, to tw. A segment is
// exactly segSize bytes, which lets it stream; a history file is small.
func (m *Manager) copyWALInto(ctx context.Context, tw *tar.Writer, o Object, segSize int64, pw *progressWriter) error {
	rc, err := m.cfg.Repo.Get(ctx, o.Name)
	if err != nil {
		return err
	}
	defer rc.Close()
	pt, err := m.cfg.Key.Open(rc, o.Name)
	if err != nil {
		return err
	}
	defer pt.Close()
	n := path.Base(o.Name)
	if historyPattern.MatchString(n) {
		data, err := io.ReadAll(io.LimitReader(pt, 64<<20))
		if err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Name: n, Mode: 0o600, Size: int64(len(data)), ModTime: o.Modified, Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		_, err = tw.Write(data)
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Name: n, Mode: 0o600, Size: segSize, ModTime: o.Modified, Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	copied, err := io.Copy(io.MultiWriter(tw, pw), io.LimitReader(pt, segSize))
	if err != nil {
		return err
	}
	if copied != segSize {
		return fmt.Errorf("archived segment %s has %d bytes, not %d: %w", o.Name, copied, segSize, ErrCorrupt)
	}
	// A byte more would be a segment of another size; reading to the end
	// also proves the object whole.
	extra, err := io.Copy(io.Discard, pt)
	if err != nil {
		return err
	}
	if extra != 0 {
		return fmt.Errorf("archived segment %s is longer than %d bytes: %w", o.Name, segSize, ErrCorrupt)
	}
	return nil
}
