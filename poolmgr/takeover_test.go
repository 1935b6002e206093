package poolmgr

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// A read begun before the takeover (as pgconn's background reader leaves
// one) must not swallow the bytes that arrive afterwards.
func TestTakeoverKeepsBytesOfAnEarlyRead(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var tc *takeoverConn
	dial := dialTakeover(time.Second, &tc)
	client, err := dial(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()

	// The early read: blocked before the takeover.
	earlyErr := make(chan error, 1)
	go func() {
		buf := make([]byte, 64)
		n, err := client.Read(buf)
		if n != 0 {
			err = errors.New("the early reader received data")
		}
		earlyErr <- err
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		tc.mu.Lock()
		early := tc.early
		tc.mu.Unlock()
		if early == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("early read never started")
		}
		time.Sleep(time.Millisecond)
	}
	if err := tc.takeover(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-earlyErr; !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("early reader: want a timeout, got %v", err)
	}
	if _, err := server.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 5)
	_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(client, got); err != nil || string(got) != "hello" {
		t.Fatalf("new owner got %q, %v", got, err)
	}
}
