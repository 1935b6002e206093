package proxy

import (
	"math/rand/v2"
	"time"

	"go.uber.org/zap"

	"github.com/pgshield/pgshield/internal/wire"
	"github.com/pgshield/pgshield/router"
)

// Statement retries.
//
// A simple-protocol Query of one statement sent outside a transaction
// block, with nothing else outstanding, is kept until its ReadyForQuery. If
// it fails with serialization_failure (40001) or deadlock_detected (40P01)
// before any of its result reached the client (a RowDescription may have:
// the one the second run sends is dropped), the error is held back and,
// at the ReadyForQuery that follows (the failed statement is rolled back
// then), the Query is sent again on the same server, up to max_retries
// times. The client sees one answer: the success, or the last error.
// Inside an explicit transaction block a statement is never run again: the
// transaction is already aborted, as PostgreSQL would report.

// retryableLocked reports whether a Query about to be sent may be retried.
func (s *session) retryableLocked(class *router.Class) bool {
	return s.srv.rt.Load().cfg.MaxRetries > 0 && s.queue.empty() && s.txStatus == 'I' &&
		class != nil && class.Statements == 1 && class.Pins == 0 && len(class.Effects) == 0
}

// retryableCode: the statement failed because of other transactions, and
// running it again may succeed.
func retryableCode(code []byte) bool {
	return string(code) == "40001" || string(code) == "40P01"
}

// holdRetryable looks at an ErrorResponse from the server (its body, with
// its SQLSTATE code): if it fails a Query that may be run again, it is held
// back and true returned.
func (s *session) holdRetryable(body, code []byte) bool {
	if s.resp.respSent || !retryableCode(code) {
		return false
	}
	s.mu.Lock()
	h := s.queue.peek()
	ok := h != nil && h.retry && s.retries < s.srv.rt.Load().cfg.MaxRetries
	s.mu.Unlock()
	if !ok {
		return false
	}
	s.resp.retryErr = wire.AppendFrame(s.resp.retryErr[:0], 'E', body)
	s.resp.replaying = true
	return true
}

// claimReplay decides, at the ReadyForQuery after a held error, whether
// the Query is sent again: not when the client has sent more since (the
// order of its messages must hold), someone is writing to the server, or
// the session is ending. When it is, the write side is claimed (s.writing)
// until replay has sent it, so the client goroutine waits.
func (s *session) claimReplay() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.queue.peek()
	if s.life != lifeOpen || s.writing || h == nil || !h.retry || s.queue.len() != 1 {
		return false
	}
	s.resp.replaying = false
	s.retries++
	s.writing = true
	code := string(wire.ErrorField(s.resp.retryErr[wire.HeaderLen:], 'C'))
	s.log.Info("running a statement again after a transient failure",
		zap.String("code", code), zap.Int("attempt", s.retries+1))
	if m := s.srv.metrics; m != nil {
		m.Retries.WithLabelValues(s.service, s.database, code).Inc()
	}
	s.resp.skipDesc = s.resp.descSent
	return true
}

// retryPause is the pause before attempt n: short, growing and jittered,
// so that the transaction that won can finish.
func retryPause(n int) time.Duration {
	return time.Duration(n)*5*time.Millisecond + time.Duration(rand.Int64N(int64(5*time.Millisecond)))
}

// takeRetryErr returns the held-back error to forward and clears it.
func (s *session) takeRetryErr() []byte {
	s.resp.replaying = false
	return s.resp.retryErr
}
