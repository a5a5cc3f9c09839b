// Package telemetry turns events into signals: Prometheus metrics, log
// lines and span attributes (DESIGN.md §1, §6, §8). Registries, loggers and
// tracer providers are passed in; nothing here is global.
package telemetry

import (
	"context"
	"net/http"
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wsbroker/wsbroker/authn"
	"github.com/wsbroker/wsbroker/telemetry/event"
)

// Namespace prefixes every metric name.
const Namespace = "wsbroker"

// HandshakeErrorKind labels wsbroker_handshake_errors_total.
type HandshakeErrorKind uint8

// Handshake failures that happen before authentication can run.
const (
	HandshakeTimeout HandshakeErrorKind = iota
	HandshakeTooLarge
	HandshakeBadRequest
	numHandshakeErrorKinds
)

var handshakeKindLabels = [numHandshakeErrorKinds]string{"timeout", "too_large", "bad_request"}

func (k HandshakeErrorKind) String() string { return handshakeKindLabels[k] }

// DropReason labels wsbroker_messages_dropped_total.
type DropReason uint8

// Why a message was not delivered.
const (
	DropSlowConsumer DropReason = iota
	DropPermissionDenied
	DropInvalid
	// DropBus: a message delivered on this node that the bus could not
	// take to the other nodes.
	DropBus
	numDropReasons
)

var dropLabels = [numDropReasons]string{"slow_consumer", "permission_denied", "invalid", "bus"}

func (d DropReason) String() string { return dropLabels[d] }

// Direction labels message counters.
type Direction uint8

// Message directions.
const (
	In Direction = iota
	Out
)

// algLabels is the closed set of the `alg` label; anything else is "other".
var algLabels = []string{"HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA", "other"}

// Metrics holds every collector of DESIGN.md §6, with label children
// precomputed so that observing an accepted upgrade does not allocate.
type Metrics struct {
	upgrades        [authn.NumReasons][authn.NumSources]prometheus.Counter
	upgradeDuration [2]prometheus.Observer // accepted, rejected
	verifyDuration  []prometheus.Observer  // by algLabels index
	tokenRemaining  prometheus.Histogram
	handshakeErrors [numHandshakeErrorKinds]prometheus.Counter
	connections     prometheus.Gauge
	closes          [event.NumCloseReasons]prometheus.Counter
	connDuration    prometheus.Histogram
	messages        [2]prometheus.Counter
	messageBytes    [2]prometheus.Counter
	dropped         [numDropReasons]prometheus.Counter
	subscriptions   prometheus.Gauge
	channels        prometheus.Gauge
	events          [event.NumTypes]prometheus.Counter
	publishErrors   prometheus.Counter
	queueDepth      prometheus.Gauge
	keysRefresh     [2]prometheus.Counter // ok, error
}

// NewRegistry returns a registry with the Go and process collectors.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}

// NewMetrics creates the collectors and registers them on reg.
func NewMetrics(reg prometheus.Registerer, version string) *Metrics {
	m := &Metrics{}
	upgrades := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "upgrades_total",
		Help: "WebSocket upgrade attempts by result, reason (none when accepted) and token source.",
	}, []string{"result", "reason", "source"})
	for s := authn.SourceNone; s < authn.NumSources; s++ {
		m.upgrades[authn.ReasonNone][s] = upgrades.WithLabelValues("accepted", "none", s.String())
		for r := authn.ReasonMissingToken; r < authn.NumReasons; r++ {
			m.upgrades[r][s] = upgrades.WithLabelValues("rejected", r.String(), s.String())
		}
	}
	upgradeDuration := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: Namespace, Name: "upgrade_duration_seconds",
		Help:    "Time from the first handshake byte to the upgrade response, by result.",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
	}, []string{"result"})
	m.upgradeDuration[0] = upgradeDuration.WithLabelValues("accepted")
	m.upgradeDuration[1] = upgradeDuration.WithLabelValues("rejected")
	verify := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: Namespace, Name: "token_verify_duration_seconds",
		Help:    "JWT verification time by algorithm.",
		Buckets: []float64{.00001, .000025, .00005, .0001, .00025, .0005, .001, .0025, .01, .1},
	}, []string{"alg"})
	for _, a := range algLabels {
		m.verifyDuration = append(m.verifyDuration, verify.WithLabelValues(a))
	}
	m.tokenRemaining = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: Namespace, Name: "token_remaining_seconds",
		Help:    "Token lifetime left (exp - now) when a connection is accepted.",
		Buckets: []float64{10, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 24 * 3600, 7 * 24 * 3600},
	})
	handshake := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "handshake_errors_total",
		Help: "Handshakes cut off before authentication: timeout, too_large, bad_request.",
	}, []string{"kind"})
	for k := HandshakeErrorKind(0); k < numHandshakeErrorKinds; k++ {
		m.handshakeErrors[k] = handshake.WithLabelValues(k.String())
	}
	m.connections = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "connections", Help: "Open WebSocket connections.",
	})
	closes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "connection_closes_total", Help: "Closed connections by close reason.",
	}, []string{"reason"})
	for c := event.CloseClientClosed; c < event.NumCloseReasons; c++ {
		m.closes[c] = closes.WithLabelValues(c.String())
	}
	m.connDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: Namespace, Name: "connection_duration_seconds", Help: "Lifetime of closed connections.",
		Buckets: []float64{1, 10, 60, 300, 900, 3600, 4 * 3600, 24 * 3600},
	})
	messages := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "messages_total", Help: "WebSocket data messages by direction.",
	}, []string{"direction"})
	bytes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "message_bytes_total", Help: "WebSocket payload bytes by direction.",
	}, []string{"direction"})
	m.messages[In], m.messages[Out] = messages.WithLabelValues("in"), messages.WithLabelValues("out")
	m.messageBytes[In], m.messageBytes[Out] = bytes.WithLabelValues("in"), bytes.WithLabelValues("out")
	dropped := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "messages_dropped_total", Help: "Messages not delivered, by reason.",
	}, []string{"reason"})
	for d := DropReason(0); d < numDropReasons; d++ {
		m.dropped[d] = dropped.WithLabelValues(d.String())
	}
	m.subscriptions = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "subscriptions", Help: "Channel subscriptions held by open connections.",
	})
	m.channels = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "channels", Help: "Channels with at least one local subscriber.",
	})
	events := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "events_total", Help: "Events built, by type (before log sampling).",
	}, []string{"type"})
	for t := event.TypeUpgradeRejected; t < event.NumTypes; t++ {
		m.events[t] = events.WithLabelValues(t.Short())
	}
	m.publishErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: Namespace, Name: "event_publish_errors_total", Help: "Event log appends that failed (after retries).",
	})
	m.queueDepth = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "event_queue_depth", Help: "Events waiting to be appended to the log.",
	})
	refresh := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "keys_refresh_total", Help: "JWKS fetches by result.",
	}, []string{"result"})
	m.keysRefresh[0], m.keysRefresh[1] = refresh.WithLabelValues("ok"), refresh.WithLabelValues("error")
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "build_info", Help: "Build of the running broker; always 1.",
	}, []string{"version", "goversion"})
	build.WithLabelValues(version, runtime.Version()).Set(1)

	reg.MustRegister(upgrades, upgradeDuration, verify, m.tokenRemaining, handshake,
		m.connections, closes, m.connDuration, messages, bytes, dropped,
		m.subscriptions, m.channels, events, m.publishErrors, m.queueDepth, refresh, build)
	return m
}

// Observe derives the event's metrics (the Sink of DESIGN.md §1).
func (m *Metrics) Observe(_ context.Context, e *event.Event) {
	if e.Type < event.NumTypes {
		m.events[e.Type].Inc()
	}
	switch e.Type {
	case event.TypeUpgradeRejected:
		c := m.upgrades[e.Reason][e.Source]
		if e.Sampled && e.TraceID.IsValid() {
			c.(prometheus.ExemplarAdder).AddWithExemplar(1, prometheus.Labels{"trace_id": e.TraceID.String()})
		} else {
			c.Inc()
		}
		m.observeDuration(1, e)
	case event.TypeConnectionOpened:
		m.upgrades[authn.ReasonNone][e.Source].Inc()
		m.observeDuration(0, e)
		m.connections.Inc()
		if !e.TokenExpiry.IsZero() {
			m.tokenRemaining.Observe(e.TokenExpiry.Sub(e.Time).Seconds())
		}
	case event.TypeConnectionClosed:
		m.connections.Dec()
		if e.CloseReason != event.CloseNone && e.CloseReason < event.NumCloseReasons {
			m.closes[e.CloseReason].Inc()
		}
		m.connDuration.Observe(e.Duration.Seconds())
	case event.TypeSubscriptionAdded:
		m.subscriptions.Inc()
	case event.TypeSubscriptionRemoved:
		m.subscriptions.Dec()
	}
}

func (m *Metrics) observeDuration(i int, e *event.Event) {
	o := m.upgradeDuration[i]
	if e.Sampled && e.TraceID.IsValid() {
		o.(prometheus.ExemplarObserver).ObserveWithExemplar(e.Duration.Seconds(), prometheus.Labels{"trace_id": e.TraceID.String()})
		return
	}
	o.Observe(e.Duration.Seconds())
}

// VerifyDuration records a JWT verification time.
func (m *Metrics) VerifyDuration(alg string, d time.Duration) {
	i := len(algLabels) - 1
	for j, a := range algLabels[:len(algLabels)-1] {
		if a == alg {
			i = j
			break
		}
	}
	m.verifyDuration[i].Observe(d.Seconds())
}

// HandshakeError counts a handshake cut off before authentication.
func (m *Metrics) HandshakeError(k HandshakeErrorKind) { m.handshakeErrors[k].Inc() }

// Message counts one data message of n payload bytes.
func (m *Metrics) Message(d Direction, n int) {
	m.messages[d].Inc()
	m.messageBytes[d].Add(float64(n))
}

// Messages counts k messages of n bytes each (one fan-out).
func (m *Metrics) Messages(d Direction, k, n int) {
	m.messages[d].Add(float64(k))
	m.messageBytes[d].Add(float64(k * n))
}

// Dropped counts an undelivered message.
func (m *Metrics) Dropped(r DropReason) { m.dropped[r].Inc() }

// Channels sets the number of channels with local subscribers.
func (m *Metrics) Channels(n int) { m.channels.Set(float64(n)) }

// EventPublishError counts a failed event append.
func (m *Metrics) EventPublishError() { m.publishErrors.Inc() }

// EventQueueDepth sets the event log's backlog.
func (m *Metrics) EventQueueDepth(n int) { m.queueDepth.Set(float64(n)) }

// KeysRefresh counts a JWKS fetch.
func (m *Metrics) KeysRefresh(err error) {
	if err != nil {
		m.keysRefresh[1].Inc()
		return
	}
	m.keysRefresh[0].Inc()
}

// Handler serves the registry, in OpenMetrics when the scraper asks for it
// (exemplars only travel in OpenMetrics).
func Handler(g prometheus.Gatherer) http.Handler {
	return promhttp.HandlerFor(g, promhttp.HandlerOpts{EnableOpenMetrics: true})
}
