//go:build linux

package main

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// sizeUnits are the suffixes parseSize takes, case aside, as GNU
// coreutils reads them: KB, MB, GB and TB are powers of 1000; K, M, G, T
// and KiB, MiB, GiB, TiB are powers of 1024.
var sizeUnits = map[string]float64{
	"":    1,
	"b":   1,
	"k":   1 << 10,
	"kib": 1 << 10,
	"kb":  1e3,
	"m":   1 << 20,
	"mib": 1 << 20,
	"mb":  1e6,
	"g":   1 << 30,
	"gib": 1 << 30,
	"gb":  1e9,
	"t":   1 << 40,
	"tib": 1 << 40,
	"tb":  1e12,
}

// sizeHelp says what parseSize takes, for errors and the usage.
const sizeHelp = "a size such as 512MiB, 200MB, 1G or a number of bytes"

// parseSize parses a number of bytes with an optional unit (see
// sizeUnits): "512MiB", "200MB", "1G", "1.5GiB", "4096".
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	if i < 0 {
		i = len(t)
	}
	num, unit := t[:i], strings.ToLower(strings.TrimSpace(t[i:]))
	mult, ok := sizeUnits[unit]
	if num == "" || !ok {
		return 0, fmt.Errorf("%q: want %s", s, sizeHelp)
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, fmt.Errorf("%q: want %s", s, sizeHelp)
	}
	n := v * mult
	if n >= math.MaxInt64 {
		return 0, fmt.Errorf("%q: too large", s)
	}
	return int64(n), nil
}

// formatSize writes n bytes in the largest binary unit that divides it,
// so that parseSize(formatSize(n)) == n.
func formatSize(n int64) string {
	for _, u := range []struct {
		name string
		size int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n != 0 && n%u.size == 0 {
			return strconv.FormatInt(n/u.size, 10) + u.name
		}
	}
	return strconv.FormatInt(n, 10)
}

// sizeFlag is a flag.Value of a size in bytes.
type sizeFlag struct{ n *int64 }

func (f sizeFlag) String() string {
	if f.n == nil {
		return "0"
	}
	return formatSize(*f.n)
}

func (f sizeFlag) Set(s string) error {
	n, err := parseSize(s)
	if err != nil {
		return err
	}
	*f.n = n
	return nil
}
