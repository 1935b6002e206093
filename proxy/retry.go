package proxy

import (
	"math/rand/v2"
	"time"

	"go.uber.org/zap"

	"github.com/pgshield/pgshield/internal/wire"
	"github.com/pgshield/pgshield/poolmgr"
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

// holdRetryable looks at an ErrorResponse from the server (frame, with its
// SQLSTATE code): if it fails a Query that may be run again, it is held back
// and true returned.
func (s *session) holdRetryable(frame, code []byte) bool {
	if s.respSent || !retryableCode(code) {
		return false
	}
	s.mu.Lock()
	h := s.queue.peek()
	ok := h != nil && h.retry && s.retries < s.srv.rt.Load().cfg.MaxRetries
	s.mu.Unlock()
	if !ok {
		return false
	}
	s.retryErr = append(s.retryErr[:0], frame...)
	s.replaying = true
	return true
}

// replay sends the held Query again. It reports false when it cannot: the
// client has sent more since (the order of its messages must hold) or the
// session is ending; the caller then forwards the held error.
func (s *session) replay(srv *poolmgr.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.queue.peek()
	if s.closing || s.writing || h == nil || !h.retry || len(s.queue.items)-s.queue.head != 1 {
		return false
	}
	s.replaying = false
	s.retries++
	code := string(errorField(s.retryErr[wire.HeaderLen:], 'C'))
	s.log.Info("running a statement again after a transient failure",
		zap.String("code", code), zap.Int("attempt", s.retries+1))
	if m := s.srv.metrics; m != nil {
		m.Retries.WithLabelValues(s.service, s.database, code).Inc()
	}
	// A short, growing, jittered pause lets the transaction that won
	// finish; the lock is held so the client cannot slip a message in.
	time.Sleep(time.Duration(s.retries)*5*time.Millisecond + time.Duration(rand.Int64N(int64(5*time.Millisecond))))
	s.skipDesc = s.descSent
	w := srv.Writer()
	if _, err := w.Write(s.retryBuf); err != nil {
		return false
	}
	if err := w.Flush(); err != nil {
		return false
	}
	return true
}

// takeRetryErr returns the held-back error to forward and clears it.
func (s *session) takeRetryErr() []byte {
	s.replaying = false
	return s.retryErr
}

// errorField returns the value of one field of an ErrorResponse body.
func errorField(body []byte, field byte) []byte {
	for len(body) > 0 && body[0] != 0 {
		t := body[0]
		body = body[1:]
		end := 0
		for end < len(body) && body[end] != 0 {
			end++
		}
		if t == field {
			return body[:end]
		}
		if end == len(body) {
			return nil
		}
		body = body[end+1:]
	}
	return nil
}
