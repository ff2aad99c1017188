package bridge

import (
	"fmt"
	"sync"
	"time"
)

// Level is a log severity, numbered as syslog and Apache number them.
type Level int

// Severities used by the bridge.
const (
	LevelError Level = 3
	LevelWarn  Level = 4
	LevelInfo  Level = 6
	LevelDebug Level = 7
)

// LogFunc receives one log line; msg starts with its MODZMQnnnn code. A nil
// LogFunc discards everything.
type LogFunc func(level Level, msg string)

// Logf formats a line with its code and hands it to log.
func (log LogFunc) Logf(level Level, code Code, format string, args ...any) {
	if log == nil {
		return
	}
	log(level, code.String()+": "+fmt.Sprintf(format, args...))
}

// RateLimit returns a LogFunc that passes at most burst lines per code prefix
// each interval to next and reports how many it held back.
func RateLimit(next LogFunc, burst int, interval time.Duration) LogFunc {
	if next == nil {
		return nil
	}
	type window struct {
		start      time.Time
		sent       int
		suppressed int
	}
	var (
		mu      sync.Mutex
		windows = map[string]*window{}
	)
	return func(level Level, msg string) {
		key := msg
		if len(key) > 10 {
			key = key[:10] // "MODZMQnnnn"
		}
		now := time.Now()
		mu.Lock()
		w := windows[key]
		if w == nil {
			w = &window{start: now}
			windows[key] = w
		}
		held := 0
		if now.Sub(w.start) >= interval {
			held = w.suppressed
			w.start, w.sent, w.suppressed = now, 0, 0
		}
		pass := w.sent < burst
		if pass {
			w.sent++
		} else {
			w.suppressed++
		}
		mu.Unlock()
		if held > 0 {
			next(level, fmt.Sprintf("%s: %d similar lines suppressed", key, held))
		}
		if pass {
			next(level, msg)
		}
	}
}
