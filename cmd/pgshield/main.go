// Command pgshield runs the pgshield proxy.
//
//	pgshield serve --config pgshield.yaml
//	pgshield dev [--dir DIR]
//	pgshield version
package main

import (
	"fmt"
	"os"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serveCmd(os.Args[2:])
	case "dev":
		err = devCmd(os.Args[2:])
	case "version", "--version":
		fmt.Println("pgshield", version)
	case "help", "-h", "--help":
		usage()
	default:
		fmt.Fprintf(os.Stderr, "pgshield: unknown command %q\n\n", os.Args[1])
		usage()
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "pgshield:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprint(os.Stderr, `usage: pgshield <command> [flags]

commands:
  serve    run the proxy from a configuration file (--config pgshield.yaml)
  dev      start a throwaway primary + replica and serve the proxy in front of them
  version  print the version
`)
}
