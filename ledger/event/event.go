// Package event is the contract of one Grantline event, shared by every
// package that makes, checks, stores or reads events: the closed type
// vocabulary, the size limits, validation (errors name the field, e.g.
// "events[3].subject.id: required"), the idempotency key (source.system, id),
// and the leaf codec — a stored leaf is the deterministic protobuf encoding of
// grantline.v1.Entry{Event, ObservedTime}, decoded either into that message
// (DecodeLeaf) or, without building messages, through a Visitor (VisitLeaf).
// For the append path it also has a hand-written codec of the event schema
// (wire.go, decode.go): StartLeaf encodes events, MarshalBatch and
// UnmarshalBatch encode and decode append requests, each byte for byte or
// message for message what the protobuf runtime does, and each handing
// whatever it does not cover (unknown fields, invalid UTF-8, unusual
// encodings) to the runtime; Batch carries what decoding and validation
// proved of a request's events to the log, so that each is checked and
// encoded once (batch.go). It imports only the generated protobuf
// package, protobuf and the standard library. docs/design.md describes the
// contract for integrators.
package event

import (
	"crypto/sha256"
	"slices"
	"time"
)

// Limits on what a caller may send. A leaf (the event plus observed_time)
// must fit MaxLeafBytes, so the event itself is kept a little below it.
const (
	MaxLeafBytes      = 32 << 10          // one stored leaf (encoded Entry)
	MaxEventBytes     = MaxLeafBytes - 64 // protobuf-encoded size of one event
	MaxBatchEvents    = 10_000            // events per Append request or stream message
	MaxMessageBytes   = 16 << 20          // one request or stream message, on the wire
	MaxIDBytes        = 512               // ids, system, kind, refs, types, product, tenant
	MaxTextBytes      = 8 << 10           // reason, display
	MaxAttributes     = 64                // entries in attributes
	MaxAttrKeyBytes   = 256               // one attribute key
	MaxAttrValueBytes = 4 << 10           // one attribute value
	MaxFutureSkew     = 24 * time.Hour    // how far ahead of the server's clock an event's time may be
)

// types is the closed vocabulary (docs/design.md).
var types = map[string]bool{
	"identity.created": true, "identity.moved": true, "identity.disabled": true,
	"identity.enabled": true, "identity.terminated": true,
	"access.requested": true, "access.approved": true, "access.denied": true,
	"access.revoked": true, "access.expired": true,
	"review.certified": true, "review.revoked": true,
	"review.opened": true, "review.signed_off": true, "review.closed": true,
	"grant.assigned": true, "grant.activated": true, "grant.deactivated": true,
	"grant.removed": true, "grant.expired": true,
	"session.started": true, "session.ended": true, "session.revoked": true,
	"credential.created": true, "credential.checked_out": true, "credential.checked_in": true,
	"credential.rotated": true, "credential.revoked": true,
	"breakglass.invoked": true, "breakglass.reviewed": true,
	"auth.succeeded": true, "account.created": true, "account.disabled": true,
}

// identityKinds are the values identity.kind may take (or empty).
var identityKinds = map[string]bool{
	"human": true, "service_account": true, "workload": true, "bot": true, "system": true,
	"vendor": true, "contractor": true,
}

// IsType reports whether t is in the closed type vocabulary.
func IsType(t string) bool { return types[t] }

// Types returns the closed type vocabulary, sorted.
func Types() []string {
	out := make([]string, 0, len(types))
	for t := range types {
		out = append(out, t)
	}
	slices.Sort(out)
	return out
}

// DedupeKey is the idempotency key of an event: SHA-256 of source.system, a
// zero byte, and id. The log stores an event once per key; sending it again
// returns the first copy's index.
func DedupeKey(system, id string) [32]byte {
	var buf [128]byte // stays on the stack for the usual short system and id
	b := append(append(append(buf[:0], system...), 0), id...)
	return sha256.Sum256(b)
}
