package proxy

import (
	"github.com/pgshield/pgshield/internal/wire"
	"github.com/pgshield/pgshield/router"
)

// Hooks let what sits beside the proxy (validation, encryption) act on the
// statements a session forwards, in both pool modes, at named events. The
// request stage calls Statement, Bind, CopyData and FunctionCall before a
// message goes to the server; the response stage calls Described, Row,
// CommandComplete and Ready as the server's answers come back. The
// proxy's own statistics, retries and session-state tracking are called at
// the same events (see docs/architecture.md).
//
// A nil field is never called and costs a nil check: a hook no
// configuration needs allocates nothing and takes no lock. Events are
// passed by value; their byte slices alias the message being handled and
// are valid only during the call.
type Hooks struct {
	// Statement: a Query (its whole text, every statement in it) or a
	// Parse reached the proxy.
	Statement func(StatementEvent) Verdict
	// Bind: parameters were bound to a prepared statement.
	Bind func(BindEvent) Verdict
	// FunctionCall: the client called a function by OID (the legacy
	// fast-path protocol).
	FunctionCall func(FunctionCallEvent) Verdict
	// CopyData: a CopyData message of a COPY FROM STDIN, and its CopyDone
	// (CopyEvent.Done).
	CopyData func(CopyEvent) Verdict
	// Described: a RowDescription arrived. Its verdict can send the rows
	// of this result set to Row, with a state of the hook's, and give the
	// client another description.
	Described func(DescribedEvent) DescribedVerdict
	// Row: a DataRow of a result set Described chose. A non-nil body is
	// what the client gets instead; a non-nil Refusal fails the statement
	// there: the client gets the error in place of the row, and the rest
	// of the result set (its rows and CommandComplete) goes nowhere.
	Row func(RowEvent) ([]byte, *Refusal)
	// ParamsDescribed: a ParameterDescription arrived for a statement the
	// client described. A non-nil return is the body the client gets
	// instead (other parameter types).
	ParamsDescribed func(ParamsDescribedEvent) []byte
	// CommandComplete: a statement completed, with its tag.
	CommandComplete func(CompleteEvent)
	// Ready: the server is ready for the next query, with the
	// transaction status ('I', 'T' or 'E').
	Ready func(ReadyEvent)
}

// SessionInfo says whose message an event is about.
type SessionInfo struct {
	ID                      uint32
	User, Database, Service string
	Mode                    string // session or transaction
}

// StatementEvent is a statement's text as the client sent it.
type StatementEvent struct {
	Session SessionInfo
	// Message is 'Q' (a simple Query, maybe several statements) or 'P'.
	Message byte
	// Name of the prepared statement ('P'; empty for the unnamed one).
	Name []byte
	Text []byte
	// ParamTypes are a Parse's parameter type count and OIDs, as sent.
	ParamTypes []byte
	// Class is what the parser found (nil with classification off or for
	// text that does not parse); its parse tree is router.Tree(Text).
	Class *router.Class
}

// Kept is what a hook's Verdict.Keep left on a statement, handed back at
// the events of that statement (its Binds, the COPY it starts), so that a
// hook analyses a statement once, at Parse, not at every Bind.

// BindEvent is a Bind: the statement it binds and its parameters.
type BindEvent struct {
	Session SessionInfo
	// Text and Class are the bound statement's, when the proxy knows it
	// (it has seen its Parse).
	Text  []byte
	Class *router.Class
	// ParamTypes are the parameter type count and OIDs of its Parse.
	ParamTypes []byte
	// Kept is the Verdict.Keep of the statement's Parse.
	Kept any
	// Bind is the message, read in place: Bind.Values() walks the
	// parameters, Bind.Format(i) says text or binary.
	Bind wire.Bind
}

// FunctionCallEvent is a FunctionCall message body.
type FunctionCallEvent struct {
	Session SessionInfo
	Body    []byte
}

// CopyEvent is one CopyData message of a COPY FROM STDIN (or its end,
// Done), with the statement that started the COPY.
type CopyEvent struct {
	Session SessionInfo
	Class   *router.Class
	// Kept is the Verdict.Keep of the statement that started the COPY
	// (its Query, or its Parse).
	Kept any
	Data []byte
	// Done: the client sent CopyDone; Data is nil. A refusal now still
	// fails the COPY.
	Done bool
	// State is the hook's own state for this COPY (a row reader, say):
	// nil at the first CopyData of each COPY, kept by the session until
	// the COPY ends.
	State *any
}

// DescribedEvent is a RowDescription body and the statement it describes.
type DescribedEvent struct {
	Session SessionInfo
	Class   *router.Class
	// Kept is the Verdict.Keep of the described statement (its Query, or
	// its Parse), when the proxy knows it.
	Kept any
	Body []byte
	// Formats: the description is of rows to come (a Query's, or a
	// portal's), so its format codes are those the rows will have; false
	// for a Describe of a prepared statement, whose codes are all text.
	Formats bool
}

// DescribedVerdict is a Described hook's decision.
type DescribedVerdict struct {
	// Rows sends the DataRows of this result set to Row.
	Rows bool
	// State is handed to Row with each row of this result set.
	State any
	// Body, when set, is the RowDescription body the client gets instead.
	Body []byte
}

// RowEvent is one DataRow body.
type RowEvent struct {
	Session SessionInfo
	Class   *router.Class
	// State is the DescribedVerdict.State of the result set.
	State any
	Body  []byte
}

// ParamsDescribedEvent is a ParameterDescription body and the statement
// it describes.
type ParamsDescribedEvent struct {
	Session SessionInfo
	Kept    any // the Verdict.Keep of the statement's Parse
	Body    []byte
}

// CompleteEvent is a CommandComplete tag.
type CompleteEvent struct {
	Session SessionInfo
	Class   *router.Class
	Tag     []byte
}

// ReadyEvent is a ReadyForQuery status.
type ReadyEvent struct {
	Session  SessionInfo
	TxStatus byte
}

// Verdict is a hook's decision on a client message. The zero Verdict lets
// it go on unchanged.
type Verdict struct {
	// Refuse, when set, answers the message with this error instead: the
	// server is sent a message that fails in its place, so its
	// transaction ends up as PostgreSQL would have left it (see
	// session.refuseLocked), and the client stays connected.
	Refuse *Refusal
	// Rewrite, when set, is the body sent to the server instead of the
	// client's (the Query text with its NUL, the Parse, the Bind, the
	// CopyData). At a CopyDone it is a CopyData body sent before it. A
	// retried statement is run again as rewritten.
	Rewrite []byte
	// Keep is kept with the statement (a Query's or a Parse's) and handed
	// back at its later events (BindEvent.Kept, CopyEvent.Kept).
	Keep any
}

// Refusal is an error a hook answers a message with. Table, Column and
// Constraint become the ErrorResponse's fields of those names.
type Refusal struct {
	Code, Message, Detail, Hint string
	Table, Column, Constraint   string
}

func (r *Refusal) pgError() *pgError {
	return &pgError{severity: "ERROR", code: r.Code, message: r.Message, detail: r.Detail, hint: r.Hint,
		table: r.Table, column: r.Column, constraint: r.Constraint}
}

// SetHooks installs h for every session, at its next message (nil removes
// them). Safe while serving.
func (s *Server) SetHooks(h *Hooks) { s.hooks.Store(h) }

// hookInfo is the session's SessionInfo for events.
func (s *session) hookInfo() SessionInfo {
	return SessionInfo{ID: s.id, User: s.user, Database: s.database, Service: s.service, Mode: string(s.mode)}
}
