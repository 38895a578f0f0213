// Package witness is the log side of witnessing: it reads a witness policy
// (which witnesses, and how many of them must cosign), sends each new signed
// checkpoint of the log to every witness of the policy as C2SP tlog-witness
// describes (https://c2sp.org/tlog-witness: POST <url>/add-checkpoint with the
// witness's old size and a consistency proof), collects their timestamped
// Ed25519 cosignatures (https://c2sp.org/tlog-cosignature, cosignature/v1),
// and keeps the newest checkpoint that reached the policy's quorum as one
// signed note carrying the log's signature and the witnesses' cosignatures.
// VerifyQuorum checks such a note offline. The Witnesser runs beside the log
// and never holds up an append: it is fed the log's checkpoints through
// Submit, which never blocks, and asks the log only for consistency proofs.
// docs/witnessing.md describes the policy file, what is sent when, the lag
// metrics and the failure modes.
package witness
