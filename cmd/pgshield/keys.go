package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pgshield/pgshield/crypto"
)

const keysUsage = `usage: pgshield keys <subcommand> --file FILE [flags]

subcommands:
  init    create a new keyring file: one randomized and one deterministic key
          (refuses to replace an existing file unless --force)
  show    list the keys: id, kind, created (UTC), primary, enabled
  rotate  add a new primary key of each kind; older keys still decrypt
  retire  --id N: disable key N once no stored value uses it; it stays in
          the file but no longer decrypts (a primary key cannot be retired)

The keyring file is encrypted with a master key derived from the passphrase
in ENCRYPTION_KEY and the salt in ENCRYPTION_SALT; every subcommand needs both.

pgshield keys <subcommand> --help lists the subcommand's flags.
`

// keysEnv is what the keys subcommands take from the process, so that
// tests can give their own.
type keysEnv struct {
	stdout    io.Writer
	keySource func() (crypto.KeySource, error)
	now       func() time.Time
}

// keysCmd is `pgshield keys init|show|rotate|retire`: managing the keyring
// file the column encryption uses.
func keysCmd(args []string) error {
	return runKeys(args, keysEnv{stdout: os.Stdout, keySource: envKeySource, now: time.Now})
}

// envKeySource is the master key of the operations guide: derived from
// ENCRYPTION_KEY and ENCRYPTION_SALT.
func envKeySource() (crypto.KeySource, error) { return crypto.EnvKeySourceFrom(os.Getenv) }

func runKeys(args []string, env keysEnv) error {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, keysUsage)
		return exitCode(2)
	}
	sub := args[0]
	switch sub {
	case "init", "show", "rotate", "retire":
	case "help", "-h", "-help", "--help":
		fmt.Fprint(env.stdout, keysUsage)
		return nil
	default:
		fmt.Fprintf(os.Stderr, "pgshield keys: unknown subcommand %q\n\n%s", sub, keysUsage)
		return exitCode(2)
	}
	flags := flag.NewFlagSet("keys "+sub, flag.ContinueOnError)
	path := flags.String("file", "", "keyring `file` (required)")
	var force *bool
	var id *uint
	switch sub {
	case "init":
		force = flags.Bool("force", false, "replace an existing keyring file: values encrypted with its keys will no longer decrypt")
	case "retire":
		id = flags.Uint("id", 0, "`id` of the key to retire, as `pgshield keys show` lists it (required)")
	}
	if err := parseFlags(flags, args[1:]); err != nil {
		return err
	}
	if *path == "" {
		fmt.Fprintf(os.Stderr, "pgshield keys %s: --file is required\n", sub)
		return exitCode(2)
	}
	if id != nil && (*id == 0 || *id > 1<<32-1) {
		fmt.Fprintf(os.Stderr, "pgshield keys retire: --id must be a key id from 1 to %d\n", uint32(1<<32-1))
		return exitCode(2)
	}
	ks, err := env.keySource()
	if err != nil {
		return err
	}
	ctx := context.Background()
	switch sub {
	case "init":
		return keysInit(ctx, env, *path, ks, *force)
	case "show":
		k, err := crypto.LoadKeyring(ctx, *path, ks)
		if err != nil {
			return err
		}
		return writeKeyTable(env.stdout, k.Keys())
	case "rotate":
		return keysChange(ctx, env, *path, ks, func(k *crypto.Keyring) (*crypto.Keyring, error) {
			return k.Rotate(env.now())
		})
	default: // retire
		return keysChange(ctx, env, *path, ks, func(k *crypto.Keyring) (*crypto.Keyring, error) {
			return k.Retire(uint32(*id))
		})
	}
}

func keysInit(ctx context.Context, env keysEnv, path string, ks crypto.KeySource, force bool) error {
	if !force {
		if _, err := os.Lstat(path); err == nil {
			return fmt.Errorf("keys init: %s exists; replacing it loses its keys, and what they encrypted no longer decrypts (--force replaces it anyway)", path)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("keys init: %w", err)
		}
	}
	k, err := crypto.NewKeyring(env.now())
	if err != nil {
		return err
	}
	if err := k.Save(ctx, path, ks); err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "created keyring %s: randomized key %d, deterministic key %d (both primary)\n",
		path, k.Primary(crypto.Randomized), k.Primary(crypto.Deterministic))
	return nil
}

// keysChange loads the keyring, applies change and saves the result in its
// place, then lists the keys.
func keysChange(ctx context.Context, env keysEnv, path string, ks crypto.KeySource, change func(*crypto.Keyring) (*crypto.Keyring, error)) error {
	k, err := crypto.LoadKeyring(ctx, path, ks)
	if err != nil {
		return err
	}
	if k, err = change(k); err != nil {
		return err
	}
	if err := k.Save(ctx, path, ks); err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "saved %s\n", path)
	return writeKeyTable(env.stdout, k.Keys())
}

// writeKeyTable lists keys, one a line: never key material.
func writeKeyTable(w io.Writer, keys []crypto.KeyInfo) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join([]string{"KEY ID", "KIND", "CREATED", "PRIMARY", "ENABLED"}, "\t"))
	for _, k := range keys {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", k.ID, k.Kind, k.Created.UTC().Format(time.RFC3339), yesNo(k.Primary), yesNo(k.Enabled))
	}
	return tw.Flush()
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
