package backup

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
)

// Kind is the kind of a backup.
type Kind string

// The kinds of backup.
const (
	// KindFull is a pg_basebackup of the whole cluster, with the WAL that
	// makes it consistent: restorable on its own.
	KindFull Kind = "full"
	// KindIncremental is the WAL from the end of the backup before it (its
	// Parent) to a restore point: restorable on top of its chain of
	// parents, down to a full backup.
	KindIncremental Kind = "incremental"
)

// Manifest is one usable backup in the catalog: what it is, where its
// objects are and how to check them. It is stored in plain JSON as the
// backup's last object (manifest.json), so that a backup without one was
// never finished; it holds no secret.
type Manifest struct {
	ID       string    `json:"id"`
	Kind     Kind      `json:"kind"`
	Cluster  string    `json:"cluster"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	// StartLSN and StopLSN bound the WAL the backup covers: for a full
	// backup its backup_manifest's WAL range (restorable once replayed to
	// StopLSN), for an incremental one its parent's StopLSN and its
	// restore point.
	StartLSN string `json:"start_lsn"`
	StopLSN  string `json:"stop_lsn"`
	Timeline int    `json:"timeline"`
	// WALSegmentSize is the server's wal_segment_size in bytes.
	WALSegmentSize int64  `json:"wal_segment_size"`
	PGVersion      string `json:"pg_version"`
	// KeyID is the id of the key its objects are sealed with.
	KeyID   string      `json:"key_id"`
	Objects []ObjectRef `json:"objects"`
	// Size is the sum of the objects' stored sizes.
	Size int64 `json:"size"`
	// Parent is the backup an incremental one follows.
	Parent string `json:"parent,omitempty"`
	// RestorePoint is the restore point (pg_create_restore_point) an
	// incremental backup ends at; a restore of it stops there.
	RestorePoint string        `json:"restore_point,omitempty"`
	Verified     *VerifyResult `json:"verified,omitempty"`
}

// ObjectRef is one object of a backup: its name in the repository, and
// the size and hex sha256 of the stored (sealed) bytes.
type ObjectRef struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Attempt is a backup that has begun and has no manifest: running, or
// failed (killed, or ended by an error). List never shows it; Attempts
// does, and DeleteExpired removes failed ones once a later backup has
// succeeded.
type Attempt struct {
	ID      string    `json:"id"`
	Kind    Kind      `json:"kind"`
	Started time.Time `json:"started"`
	// Running: this Manager is taking it now.
	Running bool `json:"-"`
}

// Object names, under <cluster>/:
//
//	backups/<id>/attempt.json     the marker, written first (plain JSON)
//	backups/<id>/base.tar         full: pg_basebackup's tar (sealed)
//	backups/<id>/backup_manifest  full: PostgreSQL's backup manifest (sealed)
//	backups/<id>/wal.tar          incremental: its WAL segments (sealed)
//	backups/<id>/manifest.json    the Manifest, written last (plain JSON)
//	wal/<segment or history file> the WAL archive (sealed)
const (
	markerFile     = "attempt.json"
	baseFile       = "base.tar"
	pgManifestFile = "backup_manifest"
	walTarFile     = "wal.tar"
	manifestFile   = "manifest.json"
)

func backupsPrefix(cluster string) string          { return cluster + "/backups/" }
func backupObject(cluster, id, file string) string { return backupsPrefix(cluster) + id + "/" + file }
func walPrefix(cluster string) string              { return cluster + "/wal/" }
func walObject(cluster, file string) string        { return walPrefix(cluster) + file }

// The manifest of a backup is small; this bounds what a damaged one makes
// us read.
const maxManifestSize = 64 << 20

// idPattern is a backup id: its start time (UTC) and kind, with a counter
// when two start in the same second.
var idPattern = regexp.MustCompile(`^[0-9]{8}T[0-9]{6}Z-(full|incr)(-[0-9]+)?$`)

// Latest is the RestoreOptions.ID of the newest usable backup.
const Latest = "LATEST"

// ValidID reports whether id has the form of a backup id.
func ValidID(id string) bool { return idPattern.MatchString(id) }

func idKind(k Kind) string {
	if k == KindIncremental {
		return "incr"
	}
	return "full"
}

// catalog is what the repository holds for one cluster.
type catalog struct {
	usable   []Manifest       // by Started, then ID
	attempts []Attempt        // no manifest
	broken   map[string]error // a manifest that cannot be read
	objects  map[string][]Object
}

func (c *catalog) byID(id string) (Manifest, bool) {
	for _, b := range c.usable {
		if b.ID == id {
			return b, true
		}
	}
	return Manifest{}, false
}

// loadCatalog reads the manifests of cluster's backups.
func loadCatalog(ctx context.Context, repo Repository, cluster string) (*catalog, error) {
	objs, err := repo.List(ctx, backupsPrefix(cluster))
	if err != nil {
		return nil, fmt.Errorf("backup: listing the backups of %s: %w", cluster, err)
	}
	c := &catalog{broken: map[string]error{}, objects: map[string][]Object{}}
	for _, o := range objs {
		rest := strings.TrimPrefix(o.Name, backupsPrefix(cluster))
		id, _, ok := strings.Cut(rest, "/")
		if !ok || !ValidID(id) {
			continue
		}
		c.objects[id] = append(c.objects[id], o)
	}
	for id, objs := range c.objects {
		files := map[string]bool{}
		for _, o := range objs {
			files[path.Base(o.Name)] = true
		}
		switch {
		case files[manifestFile]:
			m, err := readManifest(ctx, repo, cluster, id)
			if err != nil {
				c.broken[id] = err
				continue
			}
			c.usable = append(c.usable, m)
		case files[markerFile]:
			a, err := readMarker(ctx, repo, cluster, id)
			if err != nil {
				a = Attempt{ID: id, Kind: kindOfID(id), Started: startOfID(id)}
			}
			c.attempts = append(c.attempts, a)
		default:
			// Objects without a marker: what an interrupted delete leaves.
			c.attempts = append(c.attempts, Attempt{ID: id, Kind: kindOfID(id), Started: startOfID(id)})
		}
	}
	sortManifests(c.usable)
	slices.SortFunc(c.attempts, func(a, b Attempt) int { return strings.Compare(a.ID, b.ID) })
	return c, nil
}

func sortManifests(ms []Manifest) {
	slices.SortFunc(ms, func(a, b Manifest) int {
		if c := a.Started.Compare(b.Started); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
}

func kindOfID(id string) Kind {
	if strings.Contains(id, "-incr") {
		return KindIncremental
	}
	return KindFull
}

func startOfID(id string) time.Time {
	t, _ := time.Parse("20060102T150405Z", id[:min(len(id), 16)])
	return t
}

func readJSON(ctx context.Context, repo Repository, name string, v any) error {
	rc, err := repo.Get(ctx, name)
	if err != nil {
		return err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, maxManifestSize+1))
	if err != nil {
		return fmt.Errorf("backup: reading %s: %w", name, err)
	}
	if len(data) > maxManifestSize {
		return fmt.Errorf("backup: %s is larger than %d bytes: %w", name, maxManifestSize, ErrCorrupt)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("backup: %s is not a manifest (%v): %w", name, err, ErrCorrupt)
	}
	return nil
}

func readManifest(ctx context.Context, repo Repository, cluster, id string) (Manifest, error) {
	name := backupObject(cluster, id, manifestFile)
	var m Manifest
	if err := readJSON(ctx, repo, name, &m); err != nil {
		return Manifest{}, err
	}
	if m.ID != id || m.Cluster != cluster || (m.Kind != KindFull && m.Kind != KindIncremental) {
		return Manifest{}, fmt.Errorf("backup: %s describes backup %q of %q (%s), not %s of %s: %w", name, m.ID, m.Cluster, m.Kind, id, cluster, ErrCorrupt)
	}
	for _, o := range m.Objects {
		if !strings.HasPrefix(o.Name, backupsPrefix(cluster)+id+"/") {
			return Manifest{}, fmt.Errorf("backup: %s lists object %s of another backup: %w", name, o.Name, ErrCorrupt)
		}
	}
	return m, nil
}

func readMarker(ctx context.Context, repo Repository, cluster, id string) (Attempt, error) {
	var a Attempt
	if err := readJSON(ctx, repo, backupObject(cluster, id, markerFile), &a); err != nil {
		return Attempt{}, err
	}
	if a.ID != id {
		return Attempt{}, fmt.Errorf("backup: the marker of %s names %s: %w", id, a.ID, ErrCorrupt)
	}
	return a, nil
}

func putJSON(ctx context.Context, repo Repository, name string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("backup: encoding %s: %w", name, err)
	}
	if _, _, err := repo.Put(ctx, name, bytes.NewReader(append(data, '\n'))); err != nil {
		return fmt.Errorf("backup: writing %s: %w", name, err)
	}
	return nil
}

func writeManifest(ctx context.Context, repo Repository, m Manifest) error {
	return putJSON(ctx, repo, backupObject(m.Cluster, m.ID, manifestFile), m)
}

// List returns the usable backups (a manifest written last, after every
// object), oldest first; a backup that was killed has no manifest and is
// not listed (Attempts shows it). A manifest that cannot be read is left
// out and logged.
func (m *Manager) List(ctx context.Context) ([]Manifest, error) {
	c, err := m.catalog(ctx)
	if err != nil {
		return nil, err
	}
	return c.usable, nil
}

// Attempts returns the backups that began and have no manifest, oldest
// first: the running ones (Running) and failed attempts.
func (m *Manager) Attempts(ctx context.Context) ([]Attempt, error) {
	c, err := m.catalog(ctx)
	if err != nil {
		return nil, err
	}
	return c.attempts, nil
}

func (m *Manager) catalog(ctx context.Context) (*catalog, error) {
	c, err := loadCatalog(ctx, m.cfg.Repo, m.cfg.Cluster)
	if err != nil {
		return nil, err
	}
	for id, err := range c.broken {
		m.log.Warn("a backup's manifest cannot be read; the backup is not usable", zap.String("backup", id), zap.Error(err))
	}
	m.mu.Lock()
	for i := range c.attempts {
		c.attempts[i].Running = m.running[c.attempts[i].ID]
	}
	m.mu.Unlock()
	return c, nil
}

// begin picks the id of a backup starting at start, one the repository
// does not have yet, marks it running and writes its marker.
func (m *Manager) begin(ctx context.Context, kind Kind, start time.Time) (string, error) {
	base := start.UTC().Format("20060102T150405Z") + "-" + idKind(kind)
	for n := 1; n < 100; n++ {
		id := base
		if n > 1 {
			id += "-" + strconv.Itoa(n)
		}
		objs, err := m.cfg.Repo.List(ctx, backupsPrefix(m.cfg.Cluster)+id+"/")
		if err != nil {
			return "", fmt.Errorf("backup: %w", err)
		}
		if len(objs) > 0 {
			continue
		}
		m.setRunning(id, true)
		if err := putJSON(ctx, m.cfg.Repo, backupObject(m.cfg.Cluster, id, markerFile), Attempt{ID: id, Kind: kind, Started: start}); err != nil {
			m.setRunning(id, false)
			return "", err
		}
		return id, nil
	}
	return "", fmt.Errorf("backup: no free backup id for %s", base)
}

// verifyingReader counts and hashes what is read through it.
type verifyingReader struct {
	r    io.Reader
	h    hash.Hash
	n    int64
	onRd func(n int64)
}

func (h *verifyingReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	if n > 0 {
		h.h.Write(p[:n])
		h.n += int64(n)
		if h.onRd != nil {
			h.onRd(h.n)
		}
	}
	return n, err
}

// openVerified reads the object ref names, checks its stored bytes
// against ref's size and sha256, and gives read its plaintext. read need
// not read to the end: the rest is read (and checked) after it. A
// mismatch, a failed Open or damage found while reading is an error that
// names the object.
func openVerified(ctx context.Context, repo Repository, key Key, ref ObjectRef, onRead func(n int64), read func(r io.Reader) error) error {
	rc, err := repo.Get(ctx, ref.Name)
	if err != nil {
		return fmt.Errorf("backup: fetching %s: %w", ref.Name, err)
	}
	defer rc.Close()
	hr := &verifyingReader{r: rc, h: sha256.New(), onRd: onRead}
	pt, err := key.Open(hr, ref.Name)
	if err != nil {
		return fmt.Errorf("backup: opening %s: %w", ref.Name, err)
	}
	defer pt.Close()
	if err := read(pt); err != nil {
		if errors.Is(err, ErrCorrupt) || errors.Is(err, ErrWrongKey) {
			return err // it names the object
		}
		return fmt.Errorf("backup: object %s: %w", ref.Name, err)
	}
	if _, err := io.Copy(io.Discard, pt); err != nil {
		return fmt.Errorf("backup: object %s: %w", ref.Name, err)
	}
	if _, err := io.Copy(io.Discard, hr); err != nil {
		return fmt.Errorf("backup: reading %s: %w", ref.Name, err)
	}
	if sum := hex.EncodeToString(hr.h.Sum(nil)); hr.n != ref.Size || sum != ref.SHA256 {
		return fmt.Errorf("backup: object %s: stored %d bytes with sha256 %s, the manifest records %d bytes with sha256 %s: %w",
			ref.Name, hr.n, sum, ref.Size, ref.SHA256, ErrCorrupt)
	}
	return nil
}

// lsn is a WAL location.
type lsn uint64

func parseLSN(s string) (lsn, error) {
	hi, lo, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		return 0, fmt.Errorf("LSN %q: want X/Y in hexadecimal", s)
	}
	h, err1 := strconv.ParseUint(hi, 16, 32)
	l, err2 := strconv.ParseUint(lo, 16, 32)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("LSN %q: want X/Y in hexadecimal", s)
	}
	return lsn(h<<32 | l), nil
}

func (l lsn) String() string { return fmt.Sprintf("%X/%X", uint64(l)>>32, uint64(l)&0xFFFFFFFF) }

// segmentsPerID is how many segments of segSize one "xlogid" (the middle
// 8 hex digits of a segment name) holds.
func segmentsPerID(segSize int64) uint64 { return 0x100000000 / uint64(segSize) }

// segmentOf is the number of the segment holding the byte at l.
func segmentOf(l lsn, segSize int64) uint64 { return uint64(l) / uint64(segSize) }

// segmentName is the file name of segment segno on timeline tli.
func segmentName(tli uint32, segno uint64, segSize int64) string {
	per := segmentsPerID(segSize)
	return fmt.Sprintf("%08X%08X%08X", tli, segno/per, segno%per)
}

var (
	segmentPattern = regexp.MustCompile(`^[0-9A-F]{24}$`)
	historyPattern = regexp.MustCompile(`^[0-9A-F]{8}\.history$`)
)

// parseSegment splits a segment file name into its timeline and number.
func parseSegment(name string, segSize int64) (tli uint32, segno uint64, ok bool) {
	if !segmentPattern.MatchString(name) || segSize <= 0 {
		return 0, 0, false
	}
	t, _ := strconv.ParseUint(name[:8], 16, 32)
	hi, _ := strconv.ParseUint(name[8:16], 16, 32)
	lo, _ := strconv.ParseUint(name[16:], 16, 32)
	return uint32(t), hi*segmentsPerID(segSize) + lo, true
}

// walFileName reports whether name is what restore_command may be asked
// for and the archive holds: a segment or a timeline history file.
func walFileName(name string) bool {
	return segmentPattern.MatchString(name) || historyPattern.MatchString(name)
}
