package proxy

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgshield/pgshield/internal/wire"
	"github.com/pgshield/pgshield/poolmgr"
	"github.com/pgshield/pgshield/router"
)

// SQLSTATEs the proxy itself reports.
const (
	codeProtocolViolation       = "08P01"
	codeConnectionFailure       = "08006"
	codeInvalidPassword         = "28P01"
	codeInvalidAuthSpec         = "28000"
	codeInvalidCatalog          = "3D000"
	codeTooManyConnections      = "53300"
	codeAdminShutdown           = "57P01"
	codeFeatureNotSupported     = "0A000"
	codeInvalidParameterValue   = "22023"
	codeCannotConnectNow        = "57P03"
	codeInternalError           = "XX000"
	codeInvalidSQLStatementName = "26000"
)

// pgError is an error the client sees as an ErrorResponse.
type pgError struct {
	severity string // ERROR or FATAL
	code     string
	message  string
	detail   string
	hint     string
	// table, column and constraint are the ErrorResponse fields drivers
	// map an error to a field with (pgx's PgError.ColumnName); set for
	// policy refusals.
	table, column, constraint string
}

func (e *pgError) Error() string { return e.severity + " " + e.code + ": " + e.message }

func fatalf(code, format string, args ...any) *pgError {
	return &pgError{severity: "FATAL", code: code, message: fmt.Sprintf(format, args...)}
}

func errorf(code, format string, args ...any) *pgError {
	return &pgError{severity: "ERROR", code: code, message: fmt.Sprintf(format, args...)}
}

// toPgError maps any internal error to what the client is told. It is the
// one place where internal error kinds become SQLSTATEs.
func toPgError(err error) *pgError {
	var pe *pgError
	if errors.As(err, &pe) {
		return pe
	}
	var serverErr *pgconn.PgError
	var tooLarge *wire.TooLargeError
	var dialErr *poolmgr.DialError
	switch {
	case errors.Is(err, poolmgr.ErrWaitTimeout):
		return &pgError{severity: "ERROR", code: codeTooManyConnections,
			message: "no server connection available: " + err.Error(),
			hint:    "the pool is exhausted; raise max_connections of the service or wait_timeout, or find the long transactions holding connections"}
	case errors.As(err, &dialErr):
		return &pgError{severity: "ERROR", code: codeConnectionFailure,
			message: fmt.Sprintf("server %s is unavailable", dialErr.Backend),
			detail:  redactDialError(dialErr.Err)}
	case errors.As(err, &serverErr):
		return &pgError{severity: serverErr.Severity, code: serverErr.Code, message: serverErr.Message,
			detail: serverErr.Detail, hint: serverErr.Hint}
	case errors.Is(err, router.ErrFailingOver):
		return &pgError{severity: "ERROR", code: codeCannotConnectNow,
			message: "the database system is failing over: " + err.Error(),
			hint:    "retry shortly; pgshield routes to the new primary as soon as it is found"}
	case errors.Is(err, poolmgr.ErrUnknownDatabase):
		return &pgError{severity: "FATAL", code: codeInvalidCatalog, message: err.Error()}
	case errors.Is(err, context.Canceled):
		return &pgError{severity: "FATAL", code: codeAdminShutdown, message: "terminating connection: pgshield is shutting down"}
	case errors.Is(err, poolmgr.ErrClosed):
		return &pgError{severity: "FATAL", code: codeAdminShutdown, message: "pgshield is shutting down"}
	case errors.As(err, &tooLarge):
		return &pgError{severity: "FATAL", code: codeProtocolViolation,
			message: fmt.Sprintf("message of %d bytes exceeds max_message_size (%d bytes)", tooLarge.Len, tooLarge.Max)}
	case errors.Is(err, wire.ErrMalformed):
		return &pgError{severity: "FATAL", code: codeProtocolViolation, message: "invalid message length"}
	}
	return &pgError{severity: "FATAL", code: codeInternalError, message: "internal proxy error"}
}

// redactDialError keeps the reason a server could not be reached but never
// a password.
func redactDialError(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code + ": " + pgErr.Message
	}
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		return ce.Unwrap().Error()
	}
	return err.Error()
}

// response builds the ErrorResponse for e.
func (e *pgError) response() *pgproto3.ErrorResponse {
	r := ErrorResponse(e.severity, e.code, e.message, e.detail, e.hint)
	r.TableName, r.ColumnName, r.ConstraintName = e.table, e.column, e.constraint
	return r
}

// appendResponse appends e's ErrorResponse frame to dst.
func (e *pgError) appendResponse(dst []byte) []byte {
	out, err := e.response().Encode(dst)
	if err != nil {
		return dst
	}
	return out
}

// ErrorResponse builds an ErrorResponse as pgshield sends every error, on
// the client port and on the admin console alike: severity (ERROR or
// FATAL) in both its localized and unlocalized fields, the SQLSTATE, and
// the texts.
func ErrorResponse(severity, code, message, detail, hint string) *pgproto3.ErrorResponse {
	return &pgproto3.ErrorResponse{
		Severity: severity, SeverityUnlocalized: severity, Code: code,
		Message: message, Detail: detail, Hint: hint,
	}
}

// ClientError is what a client is told of err: its severity, SQLSTATE,
// message, detail and hint, by the mapping every refusal goes through
// (toPgError). ok is false for an error of no kind the mapping knows,
// which a caller may describe better itself.
func ClientError(err error) (severity, code, message, detail, hint string, ok bool) {
	pe := toPgError(err)
	return pe.severity, pe.code, pe.message, pe.detail, pe.hint, pe.code != codeInternalError
}
