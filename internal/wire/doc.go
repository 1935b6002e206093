// Package wire frames PostgreSQL protocol messages on a buffered stream.
//
// It only splits the stream into (type, length, body) and copies frames
// through; decoding and encoding of message contents is left to
// github.com/jackc/pgx/v5/pgproto3. Bodies that fit in the bufio.Reader's
// buffer are returned without copying, so forwarding a message costs no
// allocation; larger ones are read into a scratch buffer or streamed.
package wire
