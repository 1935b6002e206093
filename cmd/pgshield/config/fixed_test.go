package config

import "testing"

// Every key fixed at start names a field of the file, so RestartNeeded
// can compare it (a key that does not would refuse every reload).
func TestFixedKeysExist(t *testing.T) {
	f, err := Parse([]byte("listen: 127.0.0.1:6432\ndatabases:\n  app: {primary: 127.0.0.1:5432, user: u, password: p}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.RestartNeeded(f); err != nil {
		t.Fatalf("RestartNeeded of a file against itself: %v", err)
	}
	for _, k := range fixedKeys() {
		if _, err := f.find(k); err != nil {
			t.Errorf("fixed key %s: %v", k, err)
		}
	}
}
