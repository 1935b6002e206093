package proxy

import "testing"

// The lifecycle only moves forward, along lifecycleMoves; asking for a
// state already passed changes nothing, so racing enders cannot reopen a
// session.
func TestLifecycleMovesForwardOnly(t *testing.T) {
	s := &session{}
	steps := []struct {
		to      lifecycle
		changed bool
		now     lifecycle
	}{
		{lifeDraining, true, lifeDraining},
		{lifeOpen, false, lifeDraining},
		{lifeEnding, true, lifeEnding},
		{lifeDraining, false, lifeEnding},
		{lifeClosed, false, lifeEnding}, // closed only after closing
		{lifeClosing, true, lifeClosing},
		{lifeEnding, false, lifeClosing},
		{lifeClosed, true, lifeClosed},
		{lifeOpen, false, lifeClosed},
	}
	for _, st := range steps {
		if got := s.setLifeLocked(st.to); got != st.changed || s.life != st.now {
			t.Fatalf("to %s: changed %v, now %s; want %v, %s", st.to, got, s.life, st.changed, st.now)
		}
	}
	for l := lifeOpen; l <= lifeClosed; l++ {
		if l.String() == "" || l.String()[0] == 'l' {
			t.Errorf("lifecycle %d has no name: %q", l, l.String())
		}
	}
	if readerPump.String() != "pump" || lifecycle(99).String() != "lifecycle(99)" {
		t.Error("names")
	}
}
