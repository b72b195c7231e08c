package main

import (
	"context"
	"errors"
	"io"
)

func runAgent(ctx context.Context, args []string, stderr io.Writer) error {
	return errors.New("agent: wiring pending")
}
