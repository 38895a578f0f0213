package ingest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"maps"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/grantline/grantline/ledger"
	"github.com/grantline/grantline/ledger/event"
	"github.com/grantline/grantline/rules"
)

// An incremental evaluation (docs/design.md "Incremental evaluation")
// reuses the cached results of an earlier evaluation of the same log, at a
// smaller tree size, with the same as-of time or period and rule set, for
// every subject whose findings cannot have changed:
//
//   - changed: the subjects with an entry at or above the cached size
//     (read from the entries appended since);
//   - related: the subjects whose owner or a credential holder (the other
//     chains their rules read) has a new entry of a type the rules see in
//     such a chain (rules.RelatedChainEvent: a termination or a move);
//   - errored: subjects whose results held a rule error (a time limit may
//     have caused it), always evaluated again.
//
// Those are evaluated again, by point reads; the rest are replayed from the
// cache file, read in subject order, merged with the evaluated subjects in
// subject-index order. newerFromSource compares an entry only with entries
// of lower index (docs/rules.md), so entries appended since change nothing
// for the chains of unchanged subjects: it needs no invalidation of its
// own. Whatever is evaluated, the results of the whole evaluation are
// written as the cache of the new tree size, replacing the older one.

// maxDirtyShare: when more than this share of the subjects must be
// evaluated again, the evaluation runs in full (partitioned when the
// server partitions), which reads the log sequentially.
const maxDirtyShare = 0.5

// incremental is the cache's part in one evaluation.
type incremental struct {
	c   *evalCache
	key cacheKey
	// reason says why nothing is reused (empty when the base is used).
	reason string

	base    *cacheReader // replayed from; nil: a full evaluation
	dirty   []string     // sorted: the subjects evaluated again, with base
	changed int          // subjects with entries since base.size
	related int          // subjects evaluated again for a related chain
	errored int          // subjects evaluated again for a rule error
	next    *cacheRecord // read from base, not yet handed on

	w       *cacheWriter // the cache of this evaluation; nil: none written
	written int64
	kept    bool

	mu      sync.Mutex
	pending map[string]*relatedOfSubject // yielded, not yet emitted

	reused int // subjects replayed from base
}

// relatedOfSubject is a subject's related chains, once its chain was read.
type relatedOfSubject struct {
	done bool
	rel  []string
}

// fixedTime reports whether a request names its as-of time or period's end:
// only such evaluations are cached (an as-of time of now moves).
func fixedTime(asOf, from, to *timestamppb.Timestamp) bool {
	return asOf != nil || (from != nil && to != nil)
}

// planIncremental prepares the cache's part in a full evaluation of cp:
// the base to replay, if any is usable, and the new cache file. cs reads
// the log at cp.
func (s *Server) planIncremental(ctx context.Context, fixed bool, cp ledger.Checkpoint, from, asOf time.Time, cs *chainSource) (*incremental, error) {
	inc := &incremental{}
	switch {
	case s.cache == nil:
		inc.reason = "off"
		return inc, nil
	case !fixed:
		inc.reason = "as-of time is now"
		return inc, nil
	case cp.Size == 0:
		inc.reason = "empty log"
		return inc, nil
	}
	inc.c = s.cache
	inc.key = cacheKey{origin: cp.Origin, asOf: asOf, from: from, rules: s.ruleHash()}
	inc.reason = "no cached evaluation"
	if path, _, ok := s.cache.best(inc.key, cp.Size); ok {
		err := inc.open(ctx, s, path, cp, cs)
		switch {
		case errors.Is(err, errCacheDamaged):
			s.log.Warn("evaluation cache: ignoring a damaged or foreign cache file; evaluating in full", "file", path, "err", err)
			os.Remove(path)
			inc.reason = "cache file damaged or foreign"
		case err != nil:
			return nil, err
		}
	}
	if inc.base != nil && inc.base.size == cp.Size {
		now := time.Now()
		os.Chtimes(inc.base.path, now, now) // recently used
		if len(inc.dirty) == 0 {
			return inc, nil // all replayed: the file stays as it is
		}
	}
	w, err := s.cache.create(inc.key, cp.Size, cp.Root)
	if err != nil {
		// No cache written; the evaluation goes on.
		s.log.Warn("evaluation cache: cannot write; evaluating without keeping the results", "err", err)
	} else {
		inc.w = w
	}
	return inc, nil
}

// open checks the cache file at path and, if enough of it is reusable,
// makes it the base: it checks the file's log is the one at cp (a
// consistency proof from its tree to cp's), reads the subjects of the
// entries appended since, checks every record and picks the subjects to
// evaluate again.
func (inc *incremental) open(ctx context.Context, s *Server, path string, cp ledger.Checkpoint, cs *chainSource) error {
	cr, err := openCache(path, inc.key)
	if err != nil {
		if errors.Is(err, errCacheDamaged) {
			return err
		}
		return fmt.Errorf("%w: %w", errCacheDamaged, err)
	}
	defer func() {
		if inc.base != cr {
			cr.Close()
		}
	}()
	if cr.size > cp.Size || cr.size == 0 {
		return fmt.Errorf("%w: %s holds tree size %d", errCacheDamaged, path, cr.size)
	}
	if cr.size == cp.Size {
		if cr.root != cp.Root {
			return fmt.Errorf("%w: %s was written for another tree of size %d", errCacheDamaged, path, cr.size)
		}
	} else {
		p, err := s.cfg.Ledger.ConsistencyProof(ctx, cr.size, cp.Size)
		if err != nil {
			return fmt.Errorf("checking the evaluation cache's tree against the log: %w", err)
		}
		if err := proof.VerifyConsistency(rfc6962.DefaultHasher, cr.size, cp.Size, p, cr.root[:], cp.Root[:]); err != nil {
			return fmt.Errorf("%w: %s was written for another log (its tree of size %d is not a prefix of this one): %v", errCacheDamaged, path, cr.size, err)
		}
	}
	changed, seen, err := changedSubjects(ctx, cs, cr.size, cp.Size)
	if err != nil {
		return err
	}
	dirty := maps.Clone(changed)
	var rec cacheRecord
	total, old := 0, 0
	for {
		err := cr.next(&rec)
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		total++
		if _, ok := changed[rec.subject]; ok {
			old++
			continue
		}
		switch {
		case len(rec.result.Errors) > 0:
			inc.errored++
		case slices.ContainsFunc(rec.related, func(r string) bool { _, ok := seen[r]; return ok }):
			inc.related++
		default:
			continue
		}
		dirty[rec.subject] = struct{}{}
	}
	subjects := total + len(changed) - old
	inc.changed = len(changed)
	if float64(len(dirty)) > maxDirtyShare*float64(subjects) {
		inc.reason = fmt.Sprintf("%d of %d subjects to evaluate again", len(dirty), subjects)
		return nil
	}
	if err := cr.rewind(); err != nil {
		return err
	}
	inc.base, inc.reason = cr, ""
	inc.dirty = slices.Sorted(maps.Keys(dirty))
	return nil
}

// changedSubjects returns the subjects of the entries in [start, end), and
// those of them whose new entries include an event their readers see
// (rules.RelatedChainEvent: a subject reading its chain as an owner's or a
// credential holder's may then find otherwise).
func changedSubjects(ctx context.Context, cs *chainSource, start, end uint64) (changed, seen map[string]struct{}, err error) {
	changed, seen = map[string]struct{}{}, map[string]struct{}{}
	if start >= end {
		return changed, seen, nil
	}
	var v changeVisitor
	err = cs.ScanLog(ctx, start, end, func(e rules.Entry) error {
		v = changeVisitor{}
		err := event.VisitLeaf(e.Leaf, &v)
		if errors.Is(err, event.ErrMapLeaf) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%w: leaf %d does not decode: %w; run grantline fsck", ledger.ErrCorrupt, e.Index, err)
		}
		if len(v.subject) == 0 {
			return nil
		}
		if _, ok := changed[string(v.subject)]; !ok {
			changed[string(v.subject)] = struct{}{}
		}
		if rules.RelatedChainEvent(string(v.typ)) {
			seen[string(v.subject)] = struct{}{}
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("reading the entries appended since the cached evaluation: %w", err)
	}
	return changed, seen, nil
}

// changeVisitor keeps a leaf's subject id and type (aliasing the leaf).
type changeVisitor struct {
	event.Ignore
	subject, typ []byte
}

func (v *changeVisitor) String(f event.Field, b []byte) {
	switch f {
	case event.SubjectID:
		v.subject = b
	case event.Type:
		v.typ = b
	}
}

// isDirty reports whether subject is evaluated again.
func (inc *incremental) isDirty(subject string) bool {
	_, ok := slices.BinarySearch(inc.dirty, subject)
	return ok
}

// logSource is a ChainSource with the upgrades the server's sources have.
type logSource interface {
	rules.ChainSource
	rules.SubjectLister
	rules.LogScanner
}

// recordingSource notes the related chains of each subject whose chain it
// reads while the subject is being evaluated, for the new cache file.
type recordingSource struct {
	logSource
	inc *incremental
}

func (r recordingSource) Chain(ctx context.Context, subject string) ([]rules.Entry, error) {
	ch, err := r.logSource.Chain(ctx, subject)
	if err != nil {
		return ch, err
	}
	inc := r.inc
	inc.mu.Lock()
	p := inc.pending[subject]
	todo := p != nil && !p.done
	inc.mu.Unlock()
	if todo {
		rel := relatedOf(subject, ch)
		inc.mu.Lock()
		p.done, p.rel = true, rel
		inc.mu.Unlock()
	}
	return ch, nil
}

// wrap sets up e's source and subjects for writing the cache.
func (inc *incremental) wrap(src rules.ChainSource, subjects iter.Seq2[string, error]) (rules.ChainSource, iter.Seq2[string, error]) {
	if inc.w == nil {
		return src, subjects
	}
	ls, ok := src.(logSource)
	if !ok {
		inc.w.abort()
		inc.w = nil
		return src, subjects
	}
	inc.pending = map[string]*relatedOfSubject{}
	return recordingSource{ls, inc}, func(yield func(string, error) bool) {
		for sub, err := range subjects {
			if err == nil {
				inc.mu.Lock()
				inc.pending[sub] = &relatedOfSubject{}
				inc.mu.Unlock()
			}
			if !yield(sub, err) {
				return
			}
		}
	}
}

// emit hands an evaluated subject's results to out, after the replayed
// subjects before it, and writes them to the new cache.
func (inc *incremental) emit(r *rules.SubjectResult, out func(*rules.SubjectResult) error) error {
	if err := inc.replay(r.Subject, false, out); err != nil {
		return err
	}
	if inc.w != nil {
		inc.mu.Lock()
		p := inc.pending[r.Subject]
		delete(inc.pending, r.Subject)
		inc.mu.Unlock()
		if p == nil || !p.done {
			// Its chain was not read through the recording source: what it
			// reads is unknown, so no cache is written.
			inc.w.abort()
			inc.w = nil
		} else if err := inc.w.add(&cacheRecord{subject: r.Subject, related: p.rel, result: *r}); err != nil {
			return err
		}
	}
	return out(r)
}

// replay hands the clean cached subjects before limit (all that are left
// when all) to out, skipping those evaluated again.
func (inc *incremental) replay(limit string, all bool, out func(*rules.SubjectResult) error) error {
	if inc.base == nil {
		return nil
	}
	for !inc.base.ended {
		if inc.next == nil {
			rec := &cacheRecord{}
			err := inc.base.next(rec)
			if err == io.EOF {
				return nil
			}
			if err != nil {
				os.Remove(inc.base.path)
				return fmt.Errorf("replaying the evaluation cache (it changed on disk since it was checked, and is removed: evaluate again, in full): %w", err)
			}
			inc.next = rec
		}
		rec := inc.next
		if !all && rec.subject >= limit {
			if rec.subject == limit {
				inc.next = nil // evaluated again
			}
			return nil
		}
		inc.next = nil
		if inc.isDirty(rec.subject) {
			continue
		}
		inc.reused++
		if inc.w != nil {
			if err := inc.w.add(rec); err != nil {
				return err
			}
		}
		res := rec.result
		if err := out(&res); err != nil {
			return err
		}
	}
	return nil
}

// finish replays what is left and puts the new cache file in place.
func (inc *incremental) finish(out func(*rules.SubjectResult) error) error {
	if err := inc.replay("", true, out); err != nil {
		return err
	}
	if inc.w != nil {
		w := inc.w
		inc.w = nil
		kept, n, err := w.commit()
		if err != nil {
			inc.c.log.Warn("evaluation cache: the results could not be kept", "err", err)
		}
		inc.kept, inc.written = kept, n
		if !kept && err == nil {
			inc.c.log.Info("evaluation cache: the results are larger than the cache's bound and were not kept", "bytes", n, "max_bytes", inc.c.cfg.MaxBytes)
		}
	}
	return nil
}

// close releases the base and removes an unfinished cache file.
func (inc *incremental) close() {
	if inc.base != nil {
		inc.base.Close()
	}
	if inc.w != nil {
		inc.w.abort()
		inc.w = nil
	}
}

// cacheState is the "cache" field of the evaluation log line.
func (inc *incremental) cacheState() string {
	if inc.base != nil {
		return "reused"
	}
	return "full: " + inc.reason
}
