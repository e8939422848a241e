package health

import (
	"time"
)

// loadState reads the state file, if one is configured and can be trusted.
// It returns nil when there is nothing to restore; a bad file is logged and
// left for the next save to replace, never used.
func (w *Watcher) loadState() *savedState {
	path := w.cfg.StateFile
	if path == "" {
		return nil
	}
	saved, err := loadStateFile(path, w.cfg.Datacenter, w.cfg.LoadPrefix, w.cfg.Services)
	if err != nil {
		w.log.Warn("ignoring the Consul state file; pools stay empty until Consul answers", "file", path, "err", err)
		return nil
	}
	if saved == nil {
		w.log.Info("no Consul state file yet; pools stay empty until Consul answers", "file", path)
		return nil
	}
	w.log.Warn("serving the saved Consul state until Consul answers", "file", path, "saved", saved.saved,
		"services", len(saved.instances), "reports", len(saved.kv))
	return saved
}

// fill gives b the saved data.
func (s *savedState) fill(b *builder) {
	for svc, ins := range s.instances {
		b.instances[svc] = ins
	}
	b.setKV(s.kv)
}

// saver writes the state file at most once per stateSaveInterval, from a
// goroutine of its own so that a large catalog never delays the snapshots.
type saver struct {
	w       *Watcher
	pending bool
	t       *time.Timer
	last    time.Time
	jobs    chan stateJob
	done    chan struct{}
}

func (w *Watcher) newSaver() *saver {
	s := &saver{w: w}
	if w.cfg.StateFile == "" {
		return s
	}
	s.jobs, s.done = make(chan stateJob, 1), make(chan struct{})
	go s.write()
	return s
}

// timer is the channel that fires when a pending save is due; nil (never
// ready) when nothing waits.
func (s *saver) timer() <-chan time.Time {
	if s.t == nil || !s.pending {
		return nil
	}
	return s.t.C
}

// changed notes that the data changed: a save is due a full interval after
// the previous one, or at once if that is past.
func (s *saver) changed() {
	if s.jobs == nil || s.pending {
		return
	}
	s.pending = true
	d := max(0, time.Until(s.last.Add(stateSaveInterval)))
	if s.t == nil {
		s.t = time.NewTimer(d)
	} else {
		s.t.Reset(d)
	}
}

// save encodes b's data and hands it to the writer, replacing a write not yet
// started. It runs on the goroutine that owns b.
func (s *saver) save(b *builder) {
	s.pending, s.last = false, time.Now()
	data, err := encodeState(s.w.cfg.Datacenter, s.w.cfg.LoadPrefix, s.last, b.instances, b.kvPairs())
	select {
	case <-s.jobs: // superseded
	default:
	}
	s.jobs <- stateJob{data, err}
}

// stateJob is one save for the writer: the file's content, or why there is none.
type stateJob struct {
	data []byte
	err  error
}

// close saves what is pending and waits for the writer.
func (s *saver) close(b *builder) {
	if s.jobs == nil {
		return
	}
	if s.pending {
		s.save(b)
	}
	if s.t != nil {
		s.t.Stop()
	}
	close(s.jobs)
	<-s.done
}

func (s *saver) write() {
	defer close(s.done)
	for j := range s.jobs {
		if j.err == nil {
			j.err = writeFileAtomic(s.w.cfg.StateFile, j.data)
		}
		s.w.stateSaved(j.err)
	}
}

// StateFileStatus is the outcome of the state file's saves.
type StateFileStatus struct {
	// Path is the state file; empty when none is configured.
	Path string
	// LastSave is when the file was last written whole; zero if never.
	LastSave time.Time
	// Errors counts failed saves; LastError is the latest, nil after a success.
	Errors    uint64
	LastError error
}

// StateFile returns the state file's save status.
func (w *Watcher) StateFile() StateFileStatus {
	if p := w.stateFile.Load(); p != nil {
		return *p
	}
	return StateFileStatus{Path: w.cfg.StateFile}
}

// stateSaved records the outcome of a save, logging a failure when it
// follows a success. Only the writer goroutine calls it.
func (w *Watcher) stateSaved(err error) {
	st := w.StateFile()
	if err != nil {
		if st.LastError == nil {
			w.log.Warn("cannot save the Consul state file; a restart without Consul would start with empty pools", "file", st.Path, "err", err)
		}
		st.Errors++
		st.LastError = err
	} else {
		st.LastSave, st.LastError = time.Now(), nil
	}
	w.stateFile.Store(&st)
}

// kvPairs returns the current load reports as raw pairs.
func (b *builder) kvPairs() []kvPair {
	out := make([]kvPair, 0, len(b.reports))
	for k, r := range b.reports {
		out = append(out, kvPair{key: k, value: r.value})
	}
	return out
}
