package conncount

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
)

// procSource parses /proc/net/tcp-style files:
//
//	sl  local_address rem_address   st tx_queue ...
//	 0: 0100007F:1F90 0100007F:C350 01 00000000:00000000 ...
//
// Addresses are hex; the port is the 4 hex digits after the colon; st 01 is
// ESTABLISHED. Sockets are identified by their address 4-tuple: the inode is
// 0 while a connection waits in the accept queue, so it would change identity
// once the application accepts it.
type procSource struct {
	ports *portSet
	paths []string
	rd    *bufio.Reader
}

func newProcSource(ports *portSet, paths ...string) *procSource {
	return &procSource{ports: ports, paths: paths, rd: bufio.NewReaderSize(nil, 256<<10)}
}

func (s *procSource) close() error { return nil }

func (s *procSource) each(visit func(id uint64)) error {
	for _, p := range s.paths {
		if err := s.file(p, visit); err != nil {
			return err
		}
	}
	return nil
}

func (s *procSource) file(path string, visit func(id uint64)) error {
	f, err := os.Open(path)
	if err != nil {
		return err // *os.PathError names the file
	}
	defer f.Close()
	s.rd.Reset(f)
	first := true
	for lineNo := 1; ; lineNo++ {
		line, err := s.rd.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			return fmt.Errorf("%s line %d: line too long", path, lineNo)
		}
		if len(line) > 0 && !first {
			local, remote, ok := parseProcLine(line)
			if !ok {
				return fmt.Errorf("%s line %d: cannot parse %q", path, lineNo, bytes.TrimSpace(line))
			}
			if local.state == tcpEstablished && s.ports.has(local.port) {
				visit(fnv1a(fnv1a(fnvOffset, local.addr), remote))
			}
		}
		first = false // the header line
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", path, err)
		}
	}
}

type procLocal struct {
	addr  []byte // "0100007F:1F90"
	port  uint16
	state int
}

// parseProcLine extracts the local address (with port and state) and the
// remote address of one line; it does not allocate.
func parseProcLine(line []byte) (procLocal, []byte, bool) {
	var f [4][]byte // sl, local, remote, st
	n := 0
	for i := 0; i < len(line) && n < len(f); {
		for i < len(line) && (line[i] == ' ' || line[i] == '\t') {
			i++
		}
		j := i
		for j < len(line) && line[j] != ' ' && line[j] != '\t' && line[j] != '\n' {
			j++
		}
		if j > i {
			f[n] = line[i:j]
			n++
		}
		i = j
		if i < len(line) && line[i] == '\n' {
			break
		}
	}
	if n < 4 {
		return procLocal{}, nil, false
	}
	local := f[1]
	c := bytes.LastIndexByte(local, ':')
	if c < 0 || len(local)-c-1 != 4 || len(f[3]) != 2 {
		return procLocal{}, nil, false
	}
	port, ok := hexUint(local[c+1:])
	if !ok {
		return procLocal{}, nil, false
	}
	st, ok := hexUint(f[3])
	if !ok {
		return procLocal{}, nil, false
	}
	return procLocal{addr: local, port: uint16(port), state: int(st)}, f[2], true
}

func hexUint(b []byte) (uint32, bool) {
	var v uint32
	for _, ch := range b {
		switch {
		case ch >= '0' && ch <= '9':
			v = v<<4 | uint32(ch-'0')
		case ch >= 'A' && ch <= 'F':
			v = v<<4 | uint32(ch-'A'+10)
		case ch >= 'a' && ch <= 'f':
			v = v<<4 | uint32(ch-'a'+10)
		default:
			return 0, false
		}
	}
	return v, true
}

const fnvOffset = 14695981039346656037

// fnv1a continues a 64-bit FNV-1a hash over b (hash/fnv allocates per hash).
func fnv1a(h uint64, b []byte) uint64 {
	for _, c := range b {
		h ^= uint64(c)
		h *= 1099511628211
	}
	return h
}
