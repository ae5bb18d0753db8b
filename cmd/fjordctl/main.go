// Command fjordctl is Fjord's command-line tool: it writes proxy bootstraps
// and reports its own version. Each subcommand is wiring over a package that
// does the work (bootstrap/ for bootstraps).
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

func main() {
	if err := newRoot().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "fjordctl:", err)
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "fjordctl",
		Short:         "Command-line tool for the Fjord service mesh",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newVersion(), newBootstrap())
	root.AddCommand(newAgent(), newToken(), newCA())
	root.AddCommand(newExplain())
	return root
}
