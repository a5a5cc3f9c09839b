// Command wsbroker is the WebSocket connection broker: `serve` runs it,
// `token` mints development tokens, `version` prints the build.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// version is set with -ldflags "-X main.version=..."; otherwise the module
// build info says it.
var version = ""

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRoot().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "wsbroker:", err)
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "wsbroker",
		Short:         "WebSocket broker that authenticates every upgrade with a JWT and explains every failure",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newServeCmd(), newTokenCmd(), newProbeCmd(), newLoadgenCmd(), newSoakCmd(), newEventsCmd(), newVersionCmd())
	return root
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		RunE: func(cmd *cobra.Command, _ []string) error {
			bi, _ := debug.ReadBuildInfo()
			goVersion := ""
			if bi != nil {
				goVersion = bi.GoVersion
			}
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "wsbroker %s (%s)\n", buildVersion(), goVersion)
			return err
		},
	}
}

// bindEnv lets every flag of cmd be set as WSBROKER_<FLAG_IN_UPPER_SNAKE>;
// a flag given on the command line wins.
func bindEnv(cmd *cobra.Command, getenv func(string) string) error {
	var err error
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if err != nil || f.Changed {
			return
		}
		name := EnvName(f.Name)
		v := getenv(name)
		if v == "" {
			return
		}
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			if e := sv.Replace(strings.Split(v, ",")); e != nil {
				err = fmt.Errorf("%s: %w", name, e)
			}
			return
		}
		if e := f.Value.Set(v); e != nil {
			err = fmt.Errorf("%s=%q: %w", name, v, e)
		}
	})
	return err
}

// EnvName is the environment variable of a flag.
func EnvName(flag string) string {
	return "WSBROKER_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}
