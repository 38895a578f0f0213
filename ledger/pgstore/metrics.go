package pgstore

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the store's Prometheus metrics. Create them once per process
// with NewMetrics and pass them to every Open (a node reopens its store when
// it takes over sequencing). The zero of a *Metrics (nil) records nothing.
//
//   - grantline_pgstore_sequencer{node}: 1 while this node holds the
//     sequencing lease, else 0 (sum over nodes: how many sequence; max by
//     node: who does).
//   - grantline_pgstore_lease_epoch{node}: the epoch of the lease this node
//     holds, 0 when none.
//   - grantline_pgstore_lease_changes_total{node,change}: change is acquired,
//     lost (taken over, or not renewed in time) or released (on close).
//   - grantline_pgstore_commit_seconds{node}: latency of fenced batch
//     commits, including their durable flush.
//   - grantline_pgstore_commits_total{node,result}: result is ok, fenced or
//     error.
type Metrics struct {
	sequencer *prometheus.GaugeVec
	epoch     *prometheus.GaugeVec
	changes   *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	commits   *prometheus.CounterVec
}

// NewMetrics creates the metrics and registers them with reg (nil: not
// registered). Registering twice with the same registry reuses the first
// registration's collectors.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		sequencer: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "grantline_pgstore_sequencer",
			Help: "1 while this node holds the PostgreSQL sequencing lease.",
		}, []string{"node"}),
		epoch: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "grantline_pgstore_lease_epoch",
			Help: "Epoch of the sequencing lease this node holds (0: none).",
		}, []string{"node"}),
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grantline_pgstore_lease_changes_total",
			Help: "Sequencing lease changes seen by this node: acquired, lost, released.",
		}, []string{"node", "change"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "grantline_pgstore_commit_seconds",
			Help:    "Latency of fenced, durable batch commits to PostgreSQL.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"node"}),
		commits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grantline_pgstore_commits_total",
			Help: "Batch commits to PostgreSQL by result: ok, fenced, error.",
		}, []string{"node", "result"}),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	reg1 := func(c prometheus.Collector) prometheus.Collector {
		if err != nil {
			return c
		}
		if rerr := reg.Register(c); rerr != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(rerr, &are) {
				err = fmt.Errorf("registering pgstore metrics: %w", rerr)
				return c
			}
			return are.ExistingCollector
		}
		return c
	}
	m.sequencer = reg1(m.sequencer).(*prometheus.GaugeVec)
	m.epoch = reg1(m.epoch).(*prometheus.GaugeVec)
	m.changes = reg1(m.changes).(*prometheus.CounterVec)
	m.latency = reg1(m.latency).(*prometheus.HistogramVec)
	m.commits = reg1(m.commits).(*prometheus.CounterVec)
	if err != nil {
		return nil, err
	}
	return m, nil
}
