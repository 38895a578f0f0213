// Package checkpoint holds the keys that sign and verify Grantline's
// checkpoints and evidence: signed-note signers through sigstore signers
// (github.com/sigstore/sigstore/pkg/signature) with Ed25519 (the default,
// verifiable by golang.org/x/mod/sumdb/note) or ECDSA P-256 (the signed-note
// ECDSA algorithm of github.com/transparency-dev/formats/note), verifier key
// lines, and PEM key files. The checkpoint itself (its text, SignCheckpoint,
// OpenCheckpoint) is ledger.Checkpoint in the ledger package. Everything here
// is pure format and file code, safe to use from offline verifiers.
package checkpoint
