package ingest

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the server's Prometheus metrics, registered on one registry.
type metrics struct {
	appended      *prometheus.CounterVec // result = new | duplicate
	appendErrors  prometheus.Counter
	batchSize     prometheus.Histogram
	appendLatency prometheus.Histogram
	inflight      prometheus.Gauge
	requests      *prometheus.CounterVec // procedure, code
	refused       *prometheus.CounterVec // code, reason
	duration      *prometheus.HistogramVec
	evalSeconds   prometheus.Histogram
	evalSubjects  *prometheus.CounterVec // how = reused | evaluated
	ages          *checkpointAge
}

// checkpointAge remembers when a tree size was first seen.
type checkpointAge struct {
	now  func() time.Time
	mu   sync.Mutex
	size uint64
	seen time.Time
}

// age notes size and returns how long the latest size has been current.
func (c *checkpointAge) age(size uint64) time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	if size != c.size {
		c.size, c.seen = size, c.now()
	}
	return c.now().Sub(c.seen)
}

func newMetrics(reg *prometheus.Registry, l Ledger, now func() time.Time) *metrics {
	m := &metrics{
		ages: &checkpointAge{now: now, size: l.Latest().Size, seen: now()},
		appended: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grantline_appended_events_total", Help: "Events answered, by result (new, duplicate, or conflict: same (source.system, id), other content, not stored).",
		}, []string{"result"}),
		appendErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "grantline_append_errors_total", Help: "Ledger appends that failed (push-back, storage, shutdown).",
		}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "grantline_append_batch_events", Help: "Events per Append request or stream message.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 8),
		}),
		appendLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "grantline_append_duration_seconds", Help: "Time from handing a batch to the ledger until it is durable.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "grantline_append_inflight_events", Help: "Events handed to the ledger and not yet durable.",
		}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grantline_rpc_requests_total", Help: "RPCs handled, by procedure and Connect code.",
		}, []string{"procedure", "code"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grantline_refused_requests_total", Help: "RPCs and tile reads refused or failed, by Connect code and reason (no_token, bad_token, permission, compression, unknown_field, decode, too_large, timeout, revoked, stream_idle, ...).",
		}, []string{"code", "reason"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "grantline_rpc_duration_seconds", Help: "RPC duration by procedure.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10),
		}, []string{"procedure"}),
		evalSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "grantline_rule_evaluation_seconds", Help: "Time to evaluate the rule set for one Evaluate request.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}),
	}
	m.evalSubjects = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "grantline_evaluation_subjects_total", Help: "Subjects of full evaluations, by how their results were had: evaluated, or reused from the evaluation cache (docs/design.md \"Incremental evaluation\").",
	}, []string{"how"})
	reg.MustRegister(m.appended, m.appendErrors, m.batchSize, m.appendLatency, m.inflight,
		m.requests, m.refused, m.duration, m.evalSeconds, m.evalSubjects)
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "grantline_tree_size", Help: "Size of the latest published checkpoint.",
	}, func() float64 { return float64(l.Latest().Size) }))

	stats, _ := l.(LedgerStats)
	if stats != nil {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "grantline_queue_depth", Help: "Events queued in the ledger and not yet durable.",
		}, func() float64 { return float64(stats.Stats().QueuedEvents) }))
	}
	// Checkpoint age: since this process first saw the latest size (on a
	// scrape or an append).
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "grantline_checkpoint_age_seconds", Help: "Seconds since the latest checkpoint was first seen by this process.",
	}, func() float64 { return m.ages.age(l.Latest().Size).Seconds() }))
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}
