package format

import (
	"fmt"
	"time"
)

// Duration is the one way Grantline writes a length of time for people
// (reports, tables, summaries): the two largest units among days, hours,
// minutes and seconds, e.g. "52d 4h", "3h 20m", "25m", "40s"; "0s" for zero
// or less. Machine fields (exposure_seconds, exposure_by_subject) stay in
// seconds.
func Duration(sec int64) string {
	if sec <= 0 {
		return "0s"
	}
	d := time.Duration(sec) * time.Second
	days := int64(d / (24 * time.Hour))
	h := int64(d/time.Hour) % 24
	m := int64(d/time.Minute) % 60
	s := sec % 60
	switch {
	case days > 0 && h > 0:
		return fmt.Sprintf("%dd %dh", days, h)
	case days > 0:
		return fmt.Sprintf("%dd", days)
	case h > 0 && m > 0:
		return fmt.Sprintf("%dh %dm", h, m)
	case h > 0:
		return fmt.Sprintf("%dh", h)
	case m > 0 && s > 0:
		return fmt.Sprintf("%dm %ds", m, s)
	case m > 0:
		return fmt.Sprintf("%dm", m)
	}
	return fmt.Sprintf("%ds", s)
}
