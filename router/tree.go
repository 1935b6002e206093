package router

import pg "github.com/pganalyze/pg_query_go/v6"

// Tree parses sql with the PostgreSQL parser and returns its parse tree,
// for hooks that look deeper than a Class. It is not cached: a caller that
// needs a tree per statement caches it by text, as the Classifier does.
func Tree(sql []byte) (*pg.ParseResult, error) { return pg.Parse(string(sql)) }
