package ingest

import (
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"weak"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/grantline/grantline/ledger/event"
	pb "github.com/grantline/grantline/proto/gen/grantline/v1"
)

// The services decode requests strictly: a field this server's schema does
// not have is refused (InvalidArgument naming it), in binary protobuf and in
// JSON alike, instead of being dropped (JSON) or kept as unknown bytes
// (binary). A stored event with unknown bytes could never be reproduced
// from the exported JSON, so every evidence package covering it would fail
// verification; a dropped JSON field (a misspelt expires_at) would lose
// evidence silently. Clients must not be newer than the server.

// ErrUnknownField is the class of strict-decoding refusals (errors.Is).
var ErrUnknownField = errors.New("unknown field")

// strictProtoCodec is connect's "proto" codec refusing unknown fields.
type strictProtoCodec struct{}

func (strictProtoCodec) Name() string { return "proto" }

func (c strictProtoCodec) Marshal(m any) ([]byte, error) { return c.MarshalAppend(nil, m) }

func (strictProtoCodec) MarshalAppend(dst []byte, m any) ([]byte, error) {
	if b, ok := marshalAck(dst, m); ok {
		return b, nil
	}
	pm, ok := m.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("%T is not a protobuf message", m)
	}
	return proto.MarshalOptions{}.MarshalAppend(dst, pm)
}

func (strictProtoCodec) Unmarshal(data []byte, m any) error {
	pm, ok := m.(proto.Message)
	if !ok {
		return fmt.Errorf("%T is not a protobuf message", m)
	}
	if unmarshalAppend(data, pm) {
		return nil
	}
	if err := proto.Unmarshal(data, pm); err != nil {
		return err
	}
	return CheckUnknownFields(pm)
}

// unmarshalAppend decodes the append requests, the bulk of what the server
// decodes, with event.DecodeBatch, which builds what proto.Unmarshal
// builds from a few allocations per batch instead of ~30 per event, and
// decodes only messages without unknown fields; what it knows of the
// events goes to the handler through keepDecoded. False: pm is another
// message, or the request is not in the shape DecodeBatch decodes (an
// unknown field, a malformed encoding, ...), and proto.Unmarshal and the
// strict check decide, with their errors.
func unmarshalAppend(data []byte, pm proto.Message) bool {
	switch r := pm.(type) {
	case *pb.AppendStreamRequest:
		seq, evs, dec, ok := event.DecodeBatch(data, 1, 2) // fields seq and events
		if ok {
			proto.Reset(r)
			r.Seq, r.Events = seq, evs
			keepDecoded(evs, dec)
		}
		return ok
	case *pb.AppendRequest:
		_, evs, dec, ok := event.DecodeBatch(data, 0, 1) // field events
		if ok {
			proto.Reset(r)
			r.Events = evs
			keepDecoded(evs, dec)
		}
		return ok
	}
	return false
}

// decoded holds what the decoder knew of the events of each append request
// the codec decoded (event.Decoded: the bytes of those in their
// deterministic encoding, and that none has unknown fields or invalid
// UTF-8), until the handler that receives the message takes it
// (batchOf): connect hands the handler the message alone. Keyed weakly by
// the request's first event, an entry goes when the handler takes it or,
// for a message the handler never sees (an interceptor refused it), when
// the events are collected; it never keeps them alive.
var decoded sync.Map // weak.Pointer[pb.Event] -> *event.Decoded

// keepDecoded keeps dec, decoded with evs, for batchOf.
func keepDecoded(evs []*pb.Event, dec *event.Decoded) {
	if dec == nil || len(evs) == 0 {
		return
	}
	k := dec.Key()
	decoded.Store(k, dec)
	runtime.AddCleanup(evs[0], func(k weak.Pointer[pb.Event]) { decoded.Delete(k) }, k)
}

// batchOf returns a request's events as an event.Batch, with what the
// decoder knew of them when the codec decoded them by hand, so that
// validation and the ledger do not check or encode them again; else a
// plain batch, checked and encoded as before.
func batchOf(evs []*pb.Event) *event.Batch {
	if len(evs) > 0 {
		if d, ok := decoded.LoadAndDelete(event.KeyOf(evs)); ok {
			if b := d.(*event.Decoded).Batch(evs); b != nil {
				return b
			}
		}
	}
	return event.NewBatch(evs)
}

// CheckUnknownFields returns an error wrapping ErrUnknownField, naming the
// path of the first message (in field order) that carries fields unknown to
// the schema, e.g. `events[0].subject: unknown field number 99`. Nil if
// there are none.
func CheckUnknownFields(m proto.Message) error {
	return checkUnknown(m.ProtoReflect(), "")
}

func checkUnknown(m protoreflect.Message, path string) error {
	if raw := m.GetUnknown(); len(raw) > 0 {
		what := ""
		if num, typ, n := protowire.ConsumeTag(raw); n > 0 {
			what = fmt.Sprintf(" number %d (wire type %d)", num, typ)
		}
		return &pathError{path: path, err: fmt.Errorf("%w%s: this server's schema has no such field; nothing was stored (is the client's schema newer than the server's?)", ErrUnknownField, what)}
	}
	var err error
	for _, fd := range messageFields(m.Descriptor()) {
		if !m.Has(fd) {
			continue
		}
		name := join(path, string(fd.Name()))
		switch {
		case fd.IsList():
			l := m.Get(fd).List()
			for j := 0; j < l.Len(); j++ {
				if err = checkUnknown(l.Get(j).Message(), ""); err != nil {
					return prefixPath(err, fmt.Sprintf("%s[%d]", name, j))
				}
			}
		case fd.IsMap():
			mp := m.Get(fd).Map()
			keys := make([]string, 0, mp.Len())
			vals := map[string]protoreflect.Message{}
			mp.Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
				keys = append(keys, k.String())
				vals[k.String()] = v.Message()
				return true
			})
			slices.Sort(keys)
			for _, k := range keys {
				if err = checkUnknown(vals[k], ""); err != nil {
					return prefixPath(err, fmt.Sprintf("%s[%s]", name, strconv.Quote(k)))
				}
			}
		default:
			if err = checkUnknown(m.Get(fd).Message(), ""); err != nil {
				return prefixPath(err, name)
			}
		}
	}
	return nil
}

// msgFieldCache maps a message's full name to its fields that hold
// messages (singular, repeated, or map values), in field order.
var msgFieldCache sync.Map

func messageFields(md protoreflect.MessageDescriptor) []protoreflect.FieldDescriptor {
	if v, ok := msgFieldCache.Load(md.FullName()); ok {
		return v.([]protoreflect.FieldDescriptor)
	}
	var out []protoreflect.FieldDescriptor
	fields := md.Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		switch {
		case fd.IsMap():
			if fd.MapValue().Kind() == protoreflect.MessageKind {
				out = append(out, fd)
			}
		case fd.Kind() == protoreflect.MessageKind, fd.Kind() == protoreflect.GroupKind:
			out = append(out, fd)
		}
	}
	msgFieldCache.Store(md.FullName(), out)
	return out
}

// pathError is an unknown-field error below the top-level message; paths
// are built only on the way out of a failing walk.
type pathError struct {
	path string // "" at the message where the field was found
	err  error  // the message, without the path
}

func (e *pathError) Error() string { return at(e.path) + e.err.Error() }
func (e *pathError) Unwrap() error { return e.err }

// prefixPath puts parent in front of err's path.
func prefixPath(err error, parent string) error {
	var pe *pathError
	if errors.As(err, &pe) {
		return &pathError{path: join(parent, pe.path), err: pe.err}
	}
	return err
}

// at formats an error prefix for path ("" at the top).
func at(path string) string {
	if path == "" {
		return ""
	}
	return path + ": "
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	if name == "" {
		return path
	}
	return path + "." + name
}

// strictJSONCodec is connect's JSON codec without DiscardUnknown; the
// error of an unknown field names its path and, when the name is close to a
// real one, the field meant.
type strictJSONCodec struct{ name string }

func (c strictJSONCodec) Name() string { return c.name }

func (strictJSONCodec) Marshal(m any) ([]byte, error) {
	pm, ok := m.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("%T is not a protobuf message", m)
	}
	return protojson.Marshal(pm)
}

func (strictJSONCodec) Unmarshal(data []byte, m any) error {
	pm, ok := m.(proto.Message)
	if !ok {
		return fmt.Errorf("%T is not a protobuf message", m)
	}
	if len(data) == 0 {
		return errors.New("empty body: a JSON request is an object, at least {}")
	}
	err := protojson.UnmarshalOptions{DiscardUnknown: false}.Unmarshal(data, pm)
	if err == nil || !strings.Contains(err.Error(), "unknown field") {
		return err
	}
	var doc any
	if json.Unmarshal(data, &doc) == nil {
		if path, name, md, ok := findUnknownJSON(doc, pm.ProtoReflect().Descriptor(), ""); ok {
			hint := ""
			if near := nearestField(md, name); near != "" {
				hint = fmt.Sprintf(" (did you mean %q?)", near)
			}
			return fmt.Errorf("%s%w %q%s: this server's schema has no such field; nothing was stored", at(path), ErrUnknownField, name, hint)
		}
	}
	return fmt.Errorf("%w: %w", ErrUnknownField, err)
}

// findUnknownJSON walks a decoded JSON document along md and returns the
// path and name of the first key (in sorted order) that is not a field.
// Well-known types (Timestamp and the like) are not descended into.
func findUnknownJSON(v any, md protoreflect.MessageDescriptor, path string) (string, string, protoreflect.MessageDescriptor, bool) {
	obj, ok := v.(map[string]any)
	if !ok || strings.HasPrefix(string(md.FullName()), "google.protobuf.") {
		return "", "", nil, false
	}
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	fields := md.Fields()
	for _, k := range keys {
		fd := fields.ByJSONName(k)
		if fd == nil {
			fd = fields.ByTextName(k)
		}
		if fd == nil {
			return path, k, md, true
		}
		val := obj[k]
		name := join(path, string(fd.Name()))
		switch {
		case fd.IsMap():
			if fd.MapValue().Kind() != protoreflect.MessageKind {
				continue
			}
			mv, _ := val.(map[string]any)
			mk := make([]string, 0, len(mv))
			for key := range mv {
				mk = append(mk, key)
			}
			slices.Sort(mk)
			for _, key := range mk {
				if p, n, d, ok := findUnknownJSON(mv[key], fd.MapValue().Message(), fmt.Sprintf("%s[%s]", name, strconv.Quote(key))); ok {
					return p, n, d, true
				}
			}
		case fd.Kind() != protoreflect.MessageKind && fd.Kind() != protoreflect.GroupKind:
		case fd.IsList():
			l, _ := val.([]any)
			for i, e := range l {
				if p, n, d, ok := findUnknownJSON(e, fd.Message(), fmt.Sprintf("%s[%d]", name, i)); ok {
					return p, n, d, true
				}
			}
		default:
			if p, n, d, ok := findUnknownJSON(val, fd.Message(), name); ok {
				return p, n, d, true
			}
		}
	}
	return "", "", nil, false
}

// nearestField returns the field of md (JSON name or proto name) within
// two edits of name, or "".
func nearestField(md protoreflect.MessageDescriptor, name string) string {
	best, bestD := "", 3
	fields := md.Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		for _, cand := range []string{string(fd.Name()), fd.JSONName()} {
			if d := editDistance(strings.ToLower(name), strings.ToLower(cand)); d < bestD {
				best, bestD = cand, d
			}
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
