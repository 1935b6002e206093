package backup

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strings"
	"time"

	"go.uber.org/zap"
)

// Retention is how long each kind is kept: 30 days, 7 days and 24 hours
// when zero (the operations guide's).
type Retention struct{ FullKeep, IncrementalKeep, WALKeep time.Duration }

// The defaults of Retention.
const (
	DefaultFullKeep        = 30 * 24 * time.Hour
	DefaultIncrementalKeep = 7 * 24 * time.Hour
	DefaultWALKeep         = 24 * time.Hour
)

func (r Retention) withDefaults() Retention {
	if r.FullKeep <= 0 {
		r.FullKeep = DefaultFullKeep
	}
	if r.IncrementalKeep <= 0 {
		r.IncrementalKeep = DefaultIncrementalKeep
	}
	if r.WALKeep <= 0 {
		r.WALKeep = DefaultWALKeep
	}
	return r
}

// DeleteExpired deletes the backups past their kind's retention and the
// WAL no retained backup needs, and returns what it deleted: backup ids,
// and the WAL files as "wal/<name>".
//
//   - The newest full backup is always kept, and so is every full backup
//     younger than FullKeep.
//   - An incremental backup younger than IncrementalKeep is kept when its
//     full backup is; a kept backup keeps its whole chain of parents. The
//     rest go, as do incremental backups whose chain is broken.
//   - Archived WAL goes when it is older than WALKeep and lies before the
//     start of the oldest kept backup: from that start on, every kept
//     backup can be restored to any point up to the newest WAL. Timeline
//     history files stay (they are tiny, and recovery needs them).
//   - Failed attempts (no manifest) that a later backup has outlived go
//     too.
//
// Backups being restored or verified by this Manager are kept until the
// next run. A backup is deleted manifest first, so that an interrupted
// delete leaves an attempt (deleted next time), never a listed backup
// with missing objects.
func (m *Manager) DeleteExpired(ctx context.Context, r Retention) (deleted []string, err error) {
	r = r.withDefaults()
	if err := m.acquire(ctx); err != nil {
		return nil, err
	}
	defer m.release()
	m.catalogMu.Lock()
	defer m.catalogMu.Unlock()
	cat, err := m.catalog(ctx)
	if err != nil {
		return nil, err
	}
	now := m.now()
	m.mu.Lock()
	inUse := make(map[string]bool, len(m.inUse))
	for id := range m.inUse {
		inUse[id] = true
	}
	m.mu.Unlock()
	keep := retained(cat.usable, r, now, inUse)

	var errs []error
	var kept []Manifest
	for _, b := range cat.usable {
		if keep[b.ID] {
			kept = append(kept, b)
			continue
		}
		if err := m.deleteBackup(ctx, cat, b.ID); err != nil {
			errs = append(errs, err)
			continue
		}
		m.log.Info("retention: deleted a backup", zap.String("backup", b.ID), zap.String("kind", string(b.Kind)), zap.Time("finished", b.Finished))
		deleted = append(deleted, b.ID)
	}
	if len(cat.usable) > 0 {
		newest := cat.usable[len(cat.usable)-1].Started
		for _, a := range cat.attempts {
			if a.Running || !a.Started.Before(newest) {
				continue
			}
			if err := m.deleteBackup(ctx, cat, a.ID); err != nil {
				errs = append(errs, err)
				continue
			}
			m.log.Info("retention: deleted a failed backup attempt", zap.String("backup", a.ID))
			deleted = append(deleted, a.ID)
		}
	}
	wal, err := m.deleteWAL(ctx, kept, r, now)
	deleted = append(deleted, wal...)
	if err != nil {
		errs = append(errs, err)
	}
	if len(wal) > 0 {
		m.log.Info("retention: deleted archived WAL", zap.Int("files", len(wal)), zap.String("first", wal[0]), zap.String("last", wal[len(wal)-1]))
	}
	return deleted, errors.Join(errs...)
}

// retained is the set of backups to keep (see DeleteExpired).
func retained(backups []Manifest, r Retention, now time.Time, inUse map[string]bool) map[string]bool {
	byID := make(map[string]Manifest, len(backups))
	var newestFull string
	for _, b := range backups {
		byID[b.ID] = b
		if b.Kind == KindFull {
			newestFull = b.ID // backups are oldest first
		}
	}
	// root is an incremental backup's full backup, "" when its chain is
	// broken.
	root := func(b Manifest) string {
		for i := 0; b.Kind == KindIncremental; i++ {
			p, ok := byID[b.Parent]
			if !ok || i > len(backups) {
				return ""
			}
			b = p
		}
		return b.ID
	}
	keep := map[string]bool{}
	for _, b := range backups {
		if b.Kind == KindFull && (b.ID == newestFull || now.Sub(b.Finished) < r.FullKeep) {
			keep[b.ID] = true
		}
	}
	for _, b := range backups {
		if b.Kind == KindIncremental && now.Sub(b.Finished) < r.IncrementalKeep && keep[root(b)] {
			keep[b.ID] = true
		}
		if inUse[b.ID] && (b.Kind == KindFull || root(b) != "") {
			keep[b.ID] = true
		}
	}
	// A kept backup needs its parents.
	for _, b := range backups {
		if !keep[b.ID] {
			continue
		}
		for i := 0; b.Kind == KindIncremental && i <= len(backups); i++ {
			p, ok := byID[b.Parent]
			if !ok {
				break
			}
			keep[p.ID] = true
			b = p
		}
	}
	return keep
}

// deleteBackup deletes the objects of backup id, its manifest first and
// its marker last.
func (m *Manager) deleteBackup(ctx context.Context, cat *catalog, id string) error {
	objs := cat.objects[id]
	rank := func(name string) int {
		switch path.Base(name) {
		case manifestFile:
			return 0
		case markerFile:
			return 2
		}
		return 1
	}
	for pass := 0; pass <= 2; pass++ {
		for _, o := range objs {
			if rank(o.Name) != pass {
				continue
			}
			if err := m.cfg.Repo.Delete(ctx, o.Name); err != nil {
				return fmt.Errorf("backup: deleting backup %s: %w", id, err)
			}
		}
	}
	return nil
}

// deleteWAL deletes the archived segments older than r.WALKeep from before
// the oldest kept backup's start. Without a kept backup nothing needs WAL.
func (m *Manager) deleteWAL(ctx context.Context, kept []Manifest, r Retention, now time.Time) ([]string, error) {
	objs, err := m.cfg.Repo.List(ctx, walPrefix(m.cfg.Cluster))
	if err != nil {
		return nil, err
	}
	var cutoff uint64
	var segSize int64
	limited := false
	for _, b := range kept {
		start, err := parseLSN(b.StartLSN)
		if err != nil || b.WALSegmentSize <= 0 {
			return nil, fmt.Errorf("backup: retention: backup %s has no usable start (%q): keeping all WAL", b.ID, b.StartLSN)
		}
		if seg := segmentOf(start, b.WALSegmentSize); !limited || seg < cutoff {
			cutoff, segSize, limited = seg, b.WALSegmentSize, true
		}
	}
	var deleted []string
	for _, o := range objs {
		n := path.Base(o.Name)
		if !segmentPattern.MatchString(n) && !strings.HasSuffix(n, ".partial") {
			continue // history files, and what is not WAL
		}
		if now.Sub(o.Modified) < r.WALKeep {
			continue
		}
		if limited {
			seg := strings.TrimSuffix(n, ".partial")
			if _, segno, ok := parseSegment(seg, segSize); !ok || segno >= cutoff {
				continue
			}
		}
		if err := m.cfg.Repo.Delete(ctx, o.Name); err != nil {
			return deleted, fmt.Errorf("backup: retention: %w", err)
		}
		deleted = append(deleted, "wal/"+n)
	}
	return deleted, nil
}
