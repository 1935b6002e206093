// Package minio runs a throwaway MinIO server on a free loopback port for
// tests of the S3 backup repository: real S3 semantics (multipart uploads,
// listing order, missing keys) without a mock and without the network.
//
// The server binary is bin/minio under the repository root. When it is
// missing (or does not run) Start builds it from the Go module proxy with
// `go install github.com/minio/minio@Version` into bin/, once: concurrent
// test binaries wait on a file lock for the one that builds. `make test`
// builds it before the tests ($(BIN)/minio), so only a bare `go test`
// on a fresh machine pays for the build here (a few minutes).
//
// The package does not import admin/backup, whose in-package tests may use
// it: Server.Config returns a struct convertible to backup.S3Config.
package minio
