package proxy

import (
	"crypto/md5"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/xdg-go/scram"

	"github.com/pgshield/pgshield/internal/wire"
)

// errAuthFailed is what every failed password check reports, whatever the
// reason, so the client learns nothing about which part was wrong.
func errAuthFailed(name string) *pgError {
	return fatalf(codeInvalidPassword, "password authentication failed for user %q", name)
}

// authenticate runs the configured method for u over the startup connection.
func (c *startupConn) authenticate(u *user, method string) error {
	switch method {
	case AuthTrust:
		return nil
	case AuthMD5:
		return c.authMD5(u)
	default:
		return c.authSCRAM(u)
	}
}

func (c *startupConn) authMD5(u *user) error {
	if u.md5Hash == "" {
		return errAuthFailed(u.Name)
	}
	var salt [4]byte
	if _, err := rand.Read(salt[:]); err != nil {
		return err
	}
	if err := c.send(&pgproto3.AuthenticationMD5Password{Salt: salt}); err != nil {
		return err
	}
	body, err := c.readAuth()
	if err != nil {
		return err
	}
	var pw pgproto3.PasswordMessage
	if err := pw.Decode(body); err != nil {
		return fatalf(codeProtocolViolation, "invalid password message")
	}
	sum := md5.Sum(append([]byte(u.md5Hash[3:]), salt[:]...))
	want := "md5" + hex.EncodeToString(sum[:])
	if subtle.ConstantTimeCompare([]byte(pw.Password), []byte(want)) != 1 {
		return errAuthFailed(u.Name)
	}
	return nil
}

func (c *startupConn) authSCRAM(u *user) error {
	if u.scram == nil {
		return errAuthFailed(u.Name)
	}
	creds := *u.scram
	// The SCRAM user name is ignored, as PostgreSQL does: the startup
	// message already named the user.
	server, err := scram.SHA256.NewServer(func(string) (scram.StoredCredentials, error) { return creds, nil })
	if err != nil {
		return err
	}
	conv := server.NewConversation()
	if err := c.send(&pgproto3.AuthenticationSASL{AuthMechanisms: []string{"SCRAM-SHA-256"}}); err != nil {
		return err
	}
	body, err := c.readAuth()
	if err != nil {
		return err
	}
	var initial pgproto3.SASLInitialResponse
	if err := initial.Decode(body); err != nil {
		return fatalf(codeProtocolViolation, "invalid SASL initial response")
	}
	if initial.AuthMechanism != "SCRAM-SHA-256" {
		return fatalf(codeProtocolViolation, "unsupported SASL mechanism %q", initial.AuthMechanism)
	}
	first, err := conv.Step(string(initial.Data))
	if err != nil {
		return fatalf(codeProtocolViolation, "invalid SCRAM client-first-message")
	}
	if err := c.send(&pgproto3.AuthenticationSASLContinue{Data: []byte(first)}); err != nil {
		return err
	}
	body, err = c.readAuth()
	if err != nil {
		return err
	}
	var resp pgproto3.SASLResponse
	if err := resp.Decode(body); err != nil {
		return fatalf(codeProtocolViolation, "invalid SASL response")
	}
	final, err := conv.Step(string(resp.Data))
	if err != nil || !conv.Valid() {
		return errAuthFailed(u.Name)
	}
	return c.send(&pgproto3.AuthenticationSASLFinal{Data: []byte(final)})
}

// readAuth reads one password-type message ('p') from the client.
func (c *startupConn) readAuth() ([]byte, error) {
	typ, _, err := c.r.Next()
	if err != nil {
		var tooLarge *wire.TooLargeError
		if errors.As(err, &tooLarge) || errors.Is(err, wire.ErrMalformed) {
			return nil, toPgError(err)
		}
		return nil, fmt.Errorf("reading authentication response: %w", err)
	}
	if typ != 'p' {
		return nil, fatalf(codeProtocolViolation, "expected password response, got message type %q", typ)
	}
	return c.r.Body()
}

// md5Hash is PostgreSQL's stored md5 form of a password.
func md5Hash(password, user string) string {
	sum := md5.Sum([]byte(password + user))
	return "md5" + hex.EncodeToString(sum[:])
}
