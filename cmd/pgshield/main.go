// Command pgshield runs the pgshield proxy.
//
//	pgshield serve --config pgshield.yaml
//	pgshield dev [--dir DIR]
//	pgshield version
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
)

// version and commit are set at build time with
// -ldflags "-X main.version=... -X main.commit=..." (see the Makefile);
// without them versionString falls back to what the Go toolchain recorded.
var (
	version = "dev"
	commit  = ""
)

func main() {
	if len(os.Args) < 2 {
		usage(os.Stderr)
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serveCmd(os.Args[2:])
	case "dev":
		err = devCmd(os.Args[2:])
	case "policy":
		err = policyCmd(os.Args[2:])
	case "keys":
		err = keysCmd(os.Args[2:])
	case "restore", "wal-fetch":
		err = restoreCommand(os.Args[1], os.Args[2:])
	case "version", "--version":
		fmt.Println("pgshield", versionString())
	case "help", "-h", "-help", "--help":
		usage(os.Stdout)
	default:
		fmt.Fprintf(os.Stderr, "pgshield: unknown command %q\n\n", os.Args[1])
		usage(os.Stderr)
		os.Exit(2)
	}
	var code exitCode
	switch {
	case errors.As(err, &code):
		os.Exit(int(code))
	case err != nil:
		fmt.Fprintln(os.Stderr, "pgshield:", err)
		os.Exit(1)
	}
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage: pgshield <command> [flags]

commands:
  serve    run the proxy from a configuration file (--config pgshield.yaml)
  dev      start a throwaway primary + replica and serve the proxy in front of them
  policy   policy sql --config FILE: the SQL that enforces the policy inside PostgreSQL
  keys     keys init|show|rotate|retire --file FILE: the column-encryption keyring
           (needs ENCRYPTION_KEY and ENCRYPTION_SALT)
  restore  restore a backup: --config FILE [--backup ID|LATEST] [--to-time TS] [--to-lsn LSN]
           --into DIR [--port N] (needs BACKUP_ENCRYPTION_KEY)
  wal-fetch  --config FILE NAME PATH: an archived WAL file (a restored cluster's restore_command)
  version  print the version
  help     print this help

pgshield <command> --help lists the command's flags.
`)
}

// exitCode ends pgshield with that code and no further message (the
// message, if any, is printed already).
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// parseFlags parses a command's flags. --help prints the flags to stdout
// and ends with exitCode(0); a bad flag prints the error and the flags to
// stderr and ends with exitCode(2).
func parseFlags(fs *flag.FlagSet, args []string) error {
	var out bytes.Buffer
	fs.SetOutput(&out)
	name := fs.Name()
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: pgshield %s [flags]\n\nflags:\n", name)
		fs.PrintDefaults()
	}
	err := fs.Parse(args)
	switch {
	case err == nil:
		if fs.NArg() > 0 {
			fmt.Fprintf(os.Stderr, "pgshield %s: unexpected argument %q\n", name, fs.Arg(0))
			fs.SetOutput(os.Stderr)
			fs.Usage()
			return exitCode(2)
		}
		return nil
	case errors.Is(err, flag.ErrHelp):
		_, _ = os.Stdout.Write(out.Bytes())
		return exitCode(0)
	default:
		_, _ = os.Stderr.Write(out.Bytes())
		return exitCode(2)
	}
}

// versionString is the version `pgshield version` and the admin console's
// SHOW VERSION show, such as "v1.2.0-3-gd509515 (commit d509515,
// go1.26.8)": the version and commit stamped with -ldflags, else the module
// version and VCS revision the Go toolchain recorded in the binary.
func versionString() string {
	v, c, goVersion := version, commit, runtime.Version()
	if bi, ok := debug.ReadBuildInfo(); ok {
		goVersion = bi.GoVersion
		var rev string
		var modified bool
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
		if c == "" && rev != "" {
			c = rev[:min(len(rev), 7)]
			if modified {
				c += "-dirty"
			}
		}
		if (v == "" || v == "dev") && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
	}
	if v == "" {
		v = "dev"
	}
	details := []string{goVersion}
	if c != "" {
		details = append([]string{"commit " + c}, details...)
	}
	return v + " (" + strings.Join(details, ", ") + ")"
}
