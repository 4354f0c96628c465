package storage

import (
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

const (
	identityName  = "IDENTITY"
	identityTemp  = "IDENTITY.tmp"
	lockName      = "LOCK"
	identityMagic = "wormspace-storage-identity"
)

// Identity is what a data directory's IDENTITY file records.
type Identity struct {
	Version     int
	Cluster     string
	SegmentSize uint32
	Created     time.Time
}

func (id Identity) encode() []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s\nversion: %d\ncluster: %s\nsegment-size: %d\ncreated: %s\n",
		identityMagic, id.Version, strconv.Quote(id.Cluster), id.SegmentSize, id.Created.UTC().Format(time.RFC3339Nano))
	fmt.Fprintf(&b, "crc32c: %08x\n", crc32.Checksum(b.Bytes(), castagnoli))
	return b.Bytes()
}

// parseIdentity parses an IDENTITY file. A file that does not start with
// the magic line is foreign; one that does but fails its checksum or its
// syntax is corrupt.
func parseIdentity(b []byte) (Identity, error) {
	var id Identity
	if !bytes.HasPrefix(b, []byte(identityMagic+"\n")) {
		return id, fmt.Errorf("%w: %s is not a wormspace storage identity file", ErrForeign, identityName)
	}
	bad := func(format string, args ...any) error {
		return corrupt(identityName, 0, format, args...)
	}
	i := bytes.LastIndex(b, []byte("crc32c: "))
	if i < 0 || !bytes.HasSuffix(b, []byte("\n")) {
		return id, bad("no checksum line")
	}
	sum, err := strconv.ParseUint(strings.TrimSpace(string(b[i+len("crc32c: "):])), 16, 32)
	if err != nil || i+len("crc32c: ")+9 != len(b) {
		return id, bad("malformed checksum line")
	}
	if crc32.Checksum(b[:i], castagnoli) != uint32(sum) {
		return id, bad("checksum mismatch")
	}
	lines := strings.Split(strings.TrimSuffix(string(b[:i]), "\n"), "\n")
	if len(lines) != 5 {
		return id, bad("want 5 fields, have %d lines", len(lines))
	}
	field := func(line, key string) (string, error) {
		v, ok := strings.CutPrefix(line, key+": ")
		if !ok {
			return "", bad("want field %q, have %q", key, line)
		}
		return v, nil
	}
	v, err := field(lines[1], "version")
	if err != nil {
		return id, err
	}
	if id.Version, err = strconv.Atoi(v); err != nil {
		return id, bad("version %q", v)
	}
	if id.Version != FormatVersion {
		return id, fmt.Errorf("%w: %s has version %d, this build reads %d", ErrFormat, identityName, id.Version, FormatVersion)
	}
	if v, err = field(lines[2], "cluster"); err != nil {
		return id, err
	}
	if id.Cluster, err = strconv.Unquote(v); err != nil {
		return id, bad("cluster %s", v)
	}
	if v, err = field(lines[3], "segment-size"); err != nil {
		return id, err
	}
	ss, err := strconv.ParseUint(v, 10, 32)
	if err != nil || ss == 0 {
		return id, bad("segment size %q", v)
	}
	id.SegmentSize = uint32(ss)
	if v, err = field(lines[4], "created"); err != nil {
		return id, err
	}
	if id.Created, err = time.Parse(time.RFC3339Nano, v); err != nil {
		return id, bad("created %q", v)
	}
	return id, nil
}

// writeFileAtomic writes name in dir through a temporary file, fsync,
// rename and directory fsync, so that a crash leaves either no file or
// the whole file.
func writeFileAtomic(fsys FS, dir, name, tmp string, data []byte) error {
	tp := filepath.Join(dir, tmp)
	f, err := fsys.OpenFile(tp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC)
	if err != nil {
		return err
	}
	_, err = f.WriteAt(data, 0)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = fsys.Rename(tp, filepath.Join(dir, name))
	}
	if err == nil {
		err = fsys.SyncDir(dir)
	}
	if err != nil {
		_ = fsys.Remove(tp)
	}
	return err
}

func readIdentity(fsys FS, dir string) (Identity, bool, error) {
	b, err := readFile(fsys, filepath.Join(dir, identityName))
	if errors.Is(err, os.ErrNotExist) {
		return Identity{}, false, nil
	}
	if err != nil {
		return Identity{}, false, err
	}
	id, err := parseIdentity(b)
	return id, true, err
}
