package witness

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the Witnesser's Prometheus metrics (docs/witnessing.md).
type metrics struct {
	latestSize    prometheus.Gauge
	witnessedSize prometheus.Gauge
	lagSeconds    prometheus.GaugeFunc
	lagEntries    prometheus.GaugeFunc
	cosigned      *prometheus.GaugeVec   // witness
	requests      *prometheus.CounterVec // witness, result
	duration      *prometheus.HistogramVec
}

func newMetrics(w *Witnesser) *metrics {
	m := &metrics{
		latestSize: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "grantline_witness_submitted_size",
			Help: "Tree size of the newest checkpoint handed to the witnesses.",
		}),
		witnessedSize: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "grantline_witnessed_size",
			Help: "Tree size of the newest checkpoint that reached the witness policy's quorum.",
		}),
		lagSeconds: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "grantline_witness_lag_seconds",
			Help: "Seconds since the first checkpoint newer than the newest witnessed one was published (0 when the newest is witnessed).",
		}, func() float64 { d, _ := w.Lag(); return d.Seconds() }),
		lagEntries: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "grantline_witness_lag_entries",
			Help: "Entries in the newest checkpoint that are not yet in a witnessed checkpoint.",
		}, func() float64 { _, n := w.Lag(); return float64(n) }),
		cosigned: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "grantline_witness_cosigned_size",
			Help: "Tree size of the newest checkpoint each witness cosigned.",
		}, []string{"witness"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grantline_witness_requests_total",
			Help: "add-checkpoint requests by witness and result (ok, conflict, rejected, bad_proof, bad_cosignature, ahead, error).",
		}, []string{"witness", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "grantline_witness_request_duration_seconds",
			Help:    "Duration of add-checkpoint requests by witness.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
		}, []string{"witness"}),
	}
	for _, st := range w.ws {
		m.cosigned.WithLabelValues(st.w.Name)
	}
	return m
}

func (m *metrics) register(r prometheus.Registerer) error {
	var errs []error
	for _, c := range []prometheus.Collector{m.latestSize, m.witnessedSize, m.lagSeconds, m.lagEntries, m.cosigned, m.requests, m.duration} {
		errs = append(errs, r.Register(c))
	}
	return errors.Join(errs...)
}
