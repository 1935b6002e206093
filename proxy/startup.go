package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgshield/pgshield/internal/wire"
)

// Startup-phase request codes (the "protocol version" of special packets).
const (
	codeCancelRequest = 80877102
	codeSSLRequest    = 80877103
	codeGSSENCRequest = 80877104
	protocol30        = 3 << 16
	// maxStartupLen is PostgreSQL's own limit for a startup packet.
	maxStartupLen = 10000
	// clientReadBuf is small on purpose: it is allocated per client and
	// stays allocated while the client is idle.
	clientReadBuf = 4 << 10
)

// startupConn is a client connection before its session begins.
type startupConn struct {
	nc    net.Conn // the socket, or the TLS connection over it
	br    *bufio.Reader
	r     *wire.Reader
	isTLS bool
	// probe: the client is pg_isready (its application_name), which only
	// asks whether the server answers; its refusals are logged at debug.
	probe bool
}

func (c *startupConn) send(msgs ...pgproto3.BackendMessage) error {
	var buf []byte
	var err error
	for _, m := range msgs {
		if buf, err = m.Encode(buf); err != nil {
			return err
		}
	}
	_, err = c.nc.Write(buf)
	return err
}

// startupRequest is what a client asked for in its startup phase.
type startupRequest struct {
	cancel *pgproto3.CancelRequest
	params map[string]string
	minor  uint32 // requested protocol minor version
}

// negotiate reads startup packets until a StartupMessage or CancelRequest,
// answering SSLRequest and GSSENCRequest on the way.
func (c *startupConn) negotiate(ctx context.Context, tlsConfig *tls.Config, tlsMode string) (*startupRequest, error) {
	for {
		body, err := wire.ReadStartup(c.br, maxStartupLen)
		if err != nil {
			var tooLarge *wire.TooLargeError
			if errors.As(err, &tooLarge) || errors.Is(err, wire.ErrMalformed) {
				return nil, fatalf(codeProtocolViolation, "invalid startup packet length")
			}
			return nil, err
		}
		req, reply, err := parseStartup(body)
		if err != nil {
			return nil, err
		}
		switch reply {
		case 0:
			c.probe = req.params["application_name"] == "pg_isready"
			if req.cancel == nil && tlsMode == TLSRequire && !c.isTLS {
				return nil, fatalf(codeInvalidAuthSpec, "pgshield requires SSL: connect with sslmode=require")
			}
			return req, nil
		case 'S':
			if c.isTLS {
				return nil, fatalf(codeProtocolViolation, "SSLRequest after TLS was established")
			}
			if tlsConfig == nil {
				if _, err := c.nc.Write([]byte{'N'}); err != nil {
					return nil, err
				}
				continue
			}
			// Bytes sent before the handshake would be read as if they
			// were encrypted; refuse them rather than mix the two.
			if c.br.Buffered() > 0 {
				return nil, fatalf(codeProtocolViolation, "unexpected data after SSLRequest")
			}
			if _, err := c.nc.Write([]byte{'S'}); err != nil {
				return nil, err
			}
			tc := tls.Server(c.nc, tlsConfig)
			if err := tc.HandshakeContext(ctx); err != nil {
				return nil, fmt.Errorf("TLS handshake: %w", err)
			}
			c.nc, c.isTLS = tc, true
			c.br.Reset(tc)
			c.r.Reset(c.br)
		case 'N':
			if c.br.Buffered() > 0 {
				return nil, fatalf(codeProtocolViolation, "unexpected data after GSSENCRequest")
			}
			if _, err := c.nc.Write([]byte{'N'}); err != nil {
				return nil, err
			}
		}
	}
}

// parseStartup decodes one startup-phase packet body. reply is 'S' for an
// SSLRequest, 'N' for a GSSENCRequest and 0 otherwise. It is the fuzzed
// entry point for untrusted startup bytes.
func parseStartup(body []byte) (req *startupRequest, reply byte, err error) {
	if len(body) < 4 {
		return nil, 0, fatalf(codeProtocolViolation, "invalid startup packet")
	}
	code := binary.BigEndian.Uint32(body)
	switch code {
	case codeSSLRequest:
		if len(body) != 4 {
			return nil, 0, fatalf(codeProtocolViolation, "invalid SSLRequest packet")
		}
		return nil, 'S', nil
	case codeGSSENCRequest:
		if len(body) != 4 {
			return nil, 0, fatalf(codeProtocolViolation, "invalid GSSENCRequest packet")
		}
		return nil, 'N', nil
	case codeCancelRequest:
		var cr pgproto3.CancelRequest
		if err := cr.Decode(append([]byte(nil), body...)); err != nil {
			return nil, 0, fatalf(codeProtocolViolation, "invalid CancelRequest packet")
		}
		return &startupRequest{cancel: &cr}, 0, nil
	}
	major, minor := code>>16, code&0xffff
	if major != 3 {
		return nil, 0, fatalf(codeFeatureNotSupported,
			"unsupported frontend protocol %d.%d: pgshield supports protocol 3.0", major, minor)
	}
	params, err := parseStartupParams(body[4:])
	if err != nil {
		return nil, 0, err
	}
	return &startupRequest{params: params, minor: minor}, 0, nil
}

// parseStartupParams reads the NUL-terminated name/value pairs of a
// StartupMessage.
func parseStartupParams(b []byte) (map[string]string, error) {
	bad := fatalf(codeProtocolViolation, "invalid startup packet layout: expected terminator as last byte")
	params := make(map[string]string)
	for {
		if len(b) == 0 {
			return nil, bad
		}
		if b[0] == 0 {
			if len(b) != 1 {
				return nil, bad
			}
			return params, nil
		}
		i := bytes.IndexByte(b, 0)
		if i < 0 {
			return nil, bad
		}
		name := string(b[:i])
		b = b[i+1:]
		j := bytes.IndexByte(b, 0)
		if j < 0 {
			return nil, bad
		}
		params[name] = string(b[:j])
		b = b[j+1:]
	}
}

// parseOptions reads the "options" startup parameter: command-line style
// "-c name=value" or "--name=value" switches, with backslash escapes for
// spaces, as PostgreSQL accepts them.
func parseOptions(s string) (map[string]string, error) {
	var words []string
	var cur strings.Builder
	esc, in := false, false
	for _, r := range s {
		switch {
		case esc:
			cur.WriteRune(r)
			esc = false
		case r == '\\':
			esc, in = true, true
		case r == ' ' || r == '\t' || r == '\n':
			if in {
				words = append(words, cur.String())
				cur.Reset()
				in = false
			}
		default:
			cur.WriteRune(r)
			in = true
		}
	}
	if in {
		words = append(words, cur.String())
	}
	out := make(map[string]string)
	for i := 0; i < len(words); i++ {
		w := words[i]
		var kv string
		switch {
		case w == "-c" && i+1 < len(words):
			i++
			kv = words[i]
		case strings.HasPrefix(w, "-c"):
			kv = w[2:]
		case strings.HasPrefix(w, "--"):
			kv = w[2:]
		default:
			return nil, fatalf(codeFeatureNotSupported, "unsupported startup option %q: pgshield accepts -c name=value and --name=value", w)
		}
		name, value, ok := strings.Cut(kv, "=")
		if !ok || name == "" {
			return nil, fatalf(codeInvalidParameterValue, "invalid startup option %q: want name=value", kv)
		}
		out[strings.ReplaceAll(strings.ToLower(name), "-", "_")] = value
	}
	return out, nil
}

// clientSettings turns startup parameters into the settings replayed on
// every server the client uses, and the canonical key that identifies them.
func clientSettings(params map[string]string) (settings map[string]string, err error) {
	settings = make(map[string]string)
	for k, v := range params {
		switch k {
		case "user", "database":
		case "replication":
			return nil, fatalf(codeFeatureNotSupported, "replication connections are not supported by pgshield")
		case "options":
			opts, err := parseOptions(v)
			if err != nil {
				return nil, err
			}
			for ok, ov := range opts {
				settings[ok] = ov
			}
		default:
			if strings.HasPrefix(k, "_pq_.") {
				continue
			}
			settings[strings.ToLower(k)] = v
		}
	}
	return settings, nil
}

// settingsSQL renders settings as SET statements, in a stable order, and
// returns it with the key that identifies this set of settings.
func settingsSQL(settings map[string]string) (sql string, key string) {
	names := make([]string, 0, len(settings))
	for k := range settings {
		names = append(names, k)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, k := range names {
		b.WriteString("SET ")
		b.WriteString(quoteIdent(k))
		b.WriteString(" TO ")
		b.WriteString(quoteLiteral(settings[k]))
		b.WriteString(";")
	}
	return b.String(), b.String()
}

func quoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

func quoteLiteral(s string) string {
	s = strings.ReplaceAll(s, `'`, `''`)
	if strings.Contains(s, `\`) {
		return `E'` + strings.ReplaceAll(s, `\`, `\\`) + `'`
	}
	return `'` + s + `'`
}

// unsupportedPQOptions lists protocol extension options a client asked for.
func unsupportedPQOptions(params map[string]string) []string {
	var out []string
	for k := range params {
		if strings.HasPrefix(k, "_pq_.") {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}
