package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/wsbroker/wsbroker/broker/cluster"
	"github.com/wsbroker/wsbroker/broker/eventlog"
	"github.com/wsbroker/wsbroker/telemetry/event"
	"github.com/wsbroker/wsbroker/telemetry/redact"
)

type eventsOptions struct {
	natsURLs             []string
	natsCreds, natsTLSCA string
	dataDir              string
	typ                  string
	reason               string
	since                string
	// One limit per subcommand: each has its own default.
	tailLimit, queryLimit, replayLimit int
	json                               bool
	summary                            bool
}

func newEventsCmd() *cobra.Command {
	o := &eventsOptions{}
	cmd := &cobra.Command{
		Use:   "events",
		Short: "Read the event log: tail, query, replay",
		Long: "Read the event log (the JetStream stream " + eventlog.StreamName + ").\n\n" +
			"With --nats-url, read the stream of a NATS cluster the brokers share. Without it, open the\n" +
			"embedded store under --data-dir: this starts a NATS server on that directory, and only one\n" +
			"process can own a data dir, so it works while the broker that owns it is stopped; read a\n" +
			"running broker through its admin API (GET /v1/events) instead.",
	}
	f := cmd.PersistentFlags()
	f.StringSliceVar(&o.natsURLs, "nats-url", nil, "NATS URLs (comma list) of the event stream; default: the embedded store under --data-dir")
	f.StringVar(&o.natsCreds, "nats-creds", "", "NATS credentials file (JWT and NKey seed) for --nats-url")
	f.StringVar(&o.natsTLSCA, "nats-tls-ca", "", "PEM file of the CA that signed the NATS servers' certificates (tls:// URLs)")
	f.StringVar(&o.dataDir, "data-dir", defaultDataDir, "data dir of a stopped broker's embedded event store")
	f.StringVar(&o.typ, "type", "", "only events of this type (e.g. upgrade.rejected, wsbroker.connection.closed)")
	f.StringVar(&o.reason, "reason", "", "only events with this reason or close reason (e.g. expired, slow_consumer)")
	f.StringVar(&o.since, "since", "", "start at this position (inclusive: a SEQ value such as 1234 or 1234.5) or RFC 3339 time (default: tail from now, query the most recent, replay from the start)")
	f.BoolVar(&o.json, "json", false, "print CloudEvents JSON (one per line; query prints a JSON array) instead of a table")

	run := func(mode string, limit *int) func(cmd *cobra.Command, _ []string) error {
		return func(cmd *cobra.Command, _ []string) error {
			if err := bindEnv(cmd, os.Getenv); err != nil {
				return err
			}
			return runEvents(cmd.Context(), o, mode, *limit, cmd.OutOrStdout())
		}
	}
	tail := &cobra.Command{
		Use:   "tail",
		Short: "Print events as they are appended (from --since, or from now), until interrupted",
		RunE:  run("tail", &o.tailLimit),
	}
	tail.Flags().IntVar(&o.tailLimit, "limit", 0, "stop after this many events (0: never)")
	query := &cobra.Command{
		Use:   "query",
		Short: "Print stored events, at most --limit: the first ones from --since on, or else the most recent",
		RunE:  run("query", &o.queryLimit),
	}
	query.Flags().IntVar(&o.queryLimit, "limit", eventlog.DefaultQueryLimit, "most events printed (at most 1000)")
	replay := &cobra.Command{
		Use:   "replay",
		Short: "Print every stored event (from --since, or from the start) and optionally the projections folded from the log",
		RunE:  run("replay", &o.replayLimit),
	}
	replay.Flags().IntVar(&o.replayLimit, "limit", 0, "most events printed (0: all)")
	replay.Flags().BoolVar(&o.summary, "summary", false, "after the events, print presence as folded from the whole log")
	cmd.AddCommand(tail, query, replay)
	return cmd
}

func runEvents(ctx context.Context, o *eventsOptions, mode string, limit int, out io.Writer) error {
	q, err := eventlog.ParseQuery(func(k string) string {
		switch k {
		case "type":
			return o.typ
		case "reason":
			return o.reason
		case "since":
			return o.since
		}
		return ""
	})
	if err != nil {
		return err
	}
	q.Limit = limit
	if mode == "query" {
		if q.Limit <= 0 || q.Limit > eventlog.MaxQueryLimit {
			return fmt.Errorf("limit: %d, want 1 to %d", limit, eventlog.MaxQueryLimit)
		}
	}
	nopts, err := cluster.NATSOptions(o.natsCreds, o.natsTLSCA)
	if err != nil {
		return err
	}
	cfg := eventlog.Config{
		NATSURLs:    o.natsURLs,
		NATSOptions: nopts,
		ReadOnly:    true,
		Node:        "events-cli",
	}
	if len(o.natsURLs) == 0 {
		cfg.DataDir = o.dataDir
	}
	octx, cancel := context.WithTimeout(ctx, 30*time.Second)
	l, err := eventlog.Open(octx, cfg)
	cancel()
	if err != nil {
		if len(o.natsURLs) == 0 {
			return fmt.Errorf("data-dir %q: %w", o.dataDir, err)
		}
		return fmt.Errorf("nats-url: %w", err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = l.Close(cctx)
	}()

	p := newEventPrinter(out, o.json)
	switch mode {
	case "tail":
		p.header()
		return l.Tail(ctx, q, p.print)
	case "query":
		recs, err := l.Events(ctx, q)
		if err != nil {
			return err
		}
		if o.json {
			for i := range recs {
				eventlog.Redact(&recs[i].Event)
			}
			enc := json.NewEncoder(out)
			enc.SetIndent("", "  ")
			return enc.Encode(recs)
		}
		p.header()
		for i := range recs {
			if err := p.print(&recs[i]); err != nil {
				return err
			}
		}
		return nil
	default:
		p.header()
		if err := l.Replay(ctx, q, p.print); err != nil {
			return err
		}
		if !o.summary {
			return nil
		}
		proj := eventlog.NewProjection()
		if err := l.Replay(ctx, eventlog.Query{}, func(r *eventlog.Record) error {
			proj.Apply(r.Seq, r.Index, &r.Event)
			return nil
		}); err != nil {
			return err
		}
		return printPresence(out, proj, o.json)
	}
}

type eventPrinter struct {
	w    io.Writer
	json bool
}

func newEventPrinter(w io.Writer, asJSON bool) *eventPrinter {
	return &eventPrinter{w: w, json: asJSON}
}

const eventRowFormat = "%-8s %-24s %-22s %-14s %-20s %-22s %-11s %s\n"

func (p *eventPrinter) header() {
	if !p.json {
		fmt.Fprintf(p.w, eventRowFormat, "SEQ", "TIME", "TYPE", "NODE", "SUB", "REASON", "SOURCE", "DETAIL")
	}
}

func (p *eventPrinter) print(r *eventlog.Record) error {
	eventlog.Redact(&r.Event)
	if p.json {
		b, err := r.MarshalJSON()
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(p.w, "%s\n", b)
		return err
	}
	e := &r.Event
	sub := e.Subject
	if sub == "" && e.ClaimedSub != "" {
		sub = "claimed:" + e.ClaimedSub
	}
	reason, source := "", ""
	var detail []string
	switch e.Type {
	case event.TypeUpgradeRejected, event.TypeConnectionOpened:
		reason, source = e.Reason.String(), e.Source.String()
	case event.TypeConnectionClosed:
		reason = e.CloseReason.String()
	}
	if e.ConnID != 0 {
		detail = append(detail, "conn="+strconv.FormatUint(e.ConnID, 10))
	}
	if e.Channel != "" {
		detail = append(detail, "channel="+e.Channel)
	}
	if e.Status != 0 {
		detail = append(detail, "status="+strconv.Itoa(e.Status))
	}
	if e.CloseCode != 0 {
		detail = append(detail, "code="+strconv.Itoa(int(e.CloseCode)))
	}
	if e.Duration > 0 {
		detail = append(detail, "duration="+e.Duration.Round(10*time.Microsecond).String())
	}
	if e.RemoteIP.IsValid() {
		detail = append(detail, "ip="+e.RemoteIP.String())
	}
	if e.Suppressed > 0 {
		detail = append(detail, "suppressed="+strconv.FormatUint(e.Suppressed, 10))
	}
	if e.Detail != "" {
		detail = append(detail, strconv.Quote(e.Detail))
	}
	_, err := fmt.Fprintf(p.w, eventRowFormat,
		r.Sequence(), e.Time.UTC().Format("2006-01-02T15:04:05.000Z"),
		e.Type.Short(), e.Node, sub, reason, source, strings.Join(detail, " "))
	return err
}

func printPresence(w io.Writer, proj *eventlog.Projection, asJSON bool) error {
	pr := proj.Presence()
	if asJSON {
		return json.NewEncoder(w).Encode(pr)
	}
	fmt.Fprintf(w, "\npresence at seq %d: %d open connections\n", pr.Seq, pr.Connections)
	for _, kv := range sortedCounts(pr.Subjects) {
		fmt.Fprintf(w, "  sub %-30s %d\n", redact.Text(kv.k), kv.n)
	}
	for _, kv := range sortedCounts(pr.Channels) {
		fmt.Fprintf(w, "  channel %-26s %d\n", redact.Text(kv.k), kv.n)
	}
	return nil
}

type count struct {
	k string
	n int
}

func sortedCounts(m map[string]int) []count {
	out := make([]count, 0, len(m))
	for k, n := range m {
		out = append(out, count{k, n})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].k < out[j].k })
	return out
}

// defaultDataDir is the default of serve --data-dir.
const defaultDataDir = "./data"

// openEventLog opens the event log configured by the serve flags; nil when
// --events=false.
func openEventLog(ctx context.Context, o *serveOptions, m eventlog.Metrics, logger *slog.Logger) (*eventlog.Log, error) {
	if !o.events {
		return nil, nil
	}
	nopts, err := cluster.NATSOptions(o.natsCreds, o.natsTLSCA)
	if err != nil {
		return nil, err
	}
	cfg := eventlog.Config{
		DataDir:  o.dataDir,
		NATSURLs: o.natsURLs,
		Node:     o.nodeID,
		MaxAge:   o.eventsMaxAge,
		MaxBytes: o.eventsMaxBytes,
		Replicas: o.streamReplicas,
		// The append retries within this window are de-duplicated.
		DuplicatesWindow: o.eventsDedup,
		// The same credentials and CA as the cluster's connection.
		NATSOptions: nopts,
		Metrics:     m,
		Logger:      logger,
	}
	if o.eventsMaxAge <= 0 {
		return nil, fmt.Errorf("events-max-age: %s, want > 0", o.eventsMaxAge)
	}
	if o.eventsMaxBytes <= 0 {
		return nil, fmt.Errorf("events-max-bytes: %d, want > 0", o.eventsMaxBytes)
	}
	if o.eventsDedup < 5*time.Second || o.eventsDedup > o.eventsMaxAge {
		return nil, fmt.Errorf("events-dedup-window: %s, want from 5s (the publish timeout: a shorter window could store a retried append twice) to events-max-age (%s)", o.eventsDedup, o.eventsMaxAge)
	}
	if o.streamReplicas > 1 && len(o.natsURLs) == 0 {
		return nil, fmt.Errorf("stream-replicas: %d needs a NATS cluster (--nats-url); the embedded server has one replica", o.streamReplicas)
	}
	l, err := eventlog.Open(ctx, cfg)
	if err != nil && len(o.natsURLs) == 0 && o.dataDir == defaultDataDir && errors.Is(err, eventlog.ErrDataDirInUse) {
		// Several brokers started in one directory with default flags (test
		// harnesses do): the first owns ./data, the others run without an
		// event log rather than not at all. An explicit --data-dir that is
		// in use stays an error.
		logger.Warn("event log disabled: the default data dir is in use by another process; set --data-dir or --nats-url",
			"data_dir", o.dataDir, "err", err)
		return nil, nil
	}
	if err != nil {
		// An unreachable NATS is not an error: the log queues and catches
		// up when NATS answers (docs/reliability.md). What remains is
		// configuration.
		if len(o.natsURLs) > 0 {
			return nil, fmt.Errorf("nats-url: %w", err)
		}
		return nil, fmt.Errorf("data-dir: %w", err)
	}
	return l, nil
}

// startEventLog records this run's start: in every projection it closes the
// connections of the node's earlier runs, which a crash left open.
func startEventLog(ctx context.Context, sink event.Sink, node string, epoch uint64) {
	e := eventlog.NodeEvent(event.TypeNodeStarted, node, epoch, time.Now())
	sink.Observe(ctx, &e)
}

// stopEventLog records the node's stop once the server has drained (so the
// stop follows every close), then flushes and closes the log.
func stopEventLog(l *eventlog.Log, sink event.Sink, node string, epoch uint64, logger *slog.Logger) {
	e := eventlog.NodeEvent(event.TypeNodeStopped, node, epoch, time.Now())
	sink.Observe(context.Background(), &e)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := l.Close(ctx); err != nil {
		logger.Error("event log: events lost at shutdown", "err", err)
	}
}
