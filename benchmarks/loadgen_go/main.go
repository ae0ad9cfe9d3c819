// Command loadgen is the end-to-end benchmark's compiled MQTT load generator: the same packets as
// benchmarks/loadgen.py (MQTT 3.1.1, one authenticated connection per device, QoS 1 contract-1 readings), at
// a fraction of its CPU, so the pipeline under test gets the cores (see BENCHMARKS.md, "End to end").
//
// It reads "device secret" lines on stdin, connects them all, prints "connected N", then obeys commands on
// stdin: "rate R SECONDS [BATCH]" publishes R readings/s in total, round-robin over the devices, for SECONDS,
// BATCH readings per message (default 1: one reading per message; more: a store-and-forward upload,
// {"readings": [...]}, as a logger that samples more often than it connects sends them); "stats" prints the
// counters (in readings); "quit" disconnects. While running it prints "stats PUBLISHED ACKED" every 50 ms, and
// "done" when a rate command has finished.
package main

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

type device struct {
	id, secret string
	conn       net.Conn
	seq        int64
	nextPID    uint16
	lastMS     int64
	mu         sync.Mutex
	unacked    map[uint16]int // packet id -> readings in that message
}

var published, acked atomic.Int64

func str(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

func varint(b []byte, n int) []byte {
	for {
		c := byte(n % 128)
		n /= 128
		if n > 0 {
			c |= 0x80
		}
		b = append(b, c)
		if n == 0 {
			return b
		}
	}
}

func connectPacket(clientID, user, pass string) []byte {
	var body []byte
	body = str(body, "MQTT")
	body = append(body, 4, 0x80|0x40|0x02, 0, 0) // level 4, user+password+clean session, keepalive 0
	body = str(body, clientID)
	body = str(body, user)
	body = str(body, pass)
	return append(varint([]byte{0x10}, len(body)), body...)
}

func (d *device) connect(addr string) error {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	if _, err := conn.Write(connectPacket("lg-"+d.id, d.id, d.secret)); err != nil {
		return err
	}
	ack := make([]byte, 4)
	if _, err := io.ReadFull(conn, ack); err != nil {
		return fmt.Errorf("%s: no CONNACK: %w", d.id, err)
	}
	if ack[0] != 0x20 || ack[3] != 0 {
		return fmt.Errorf("%s: CONNACK return code %d", d.id, ack[3])
	}
	d.conn, d.nextPID, d.unacked = conn, 1, map[uint16]int{}
	go d.readAcks()
	return nil
}

// readAcks counts PUBACKs; Mosquitto sends this client nothing else after CONNACK (4 bytes each).
func (d *device) readAcks() {
	r := bufio.NewReaderSize(d.conn, 4096)
	pkt := make([]byte, 4)
	for {
		if _, err := io.ReadFull(r, pkt); err != nil {
			return
		}
		if pkt[0] == 0x40 {
			pid := binary.BigEndian.Uint16(pkt[2:])
			d.mu.Lock()
			if n, ok := d.unacked[pid]; ok {
				delete(d.unacked, pid)
				acked.Add(int64(n))
			}
			d.mu.Unlock()
		}
	}
}

// publish sends one message of n readings (n > 1: a store-and-forward upload) stamped up to now.
func (d *device) publish(now time.Time, n int, buf []byte) []byte {
	var payload []byte
	if n > 1 {
		payload = append(payload, `{"readings":[`...)
	}
	for k := 0; k < n; k++ {
		d.seq++
		// Strictly increasing per device, as a real logger stamps them; a batch's readings end at now.
		ms := now.UnixMilli() - int64(n-1-k)
		if ms <= d.lastMS {
			ms = d.lastMS + 1
		}
		d.lastMS = ms
		if k > 0 {
			payload = append(payload, ',')
		}
		payload = fmt.Appendf(payload, `{"ts":%d.%03d,"seq":%d,"temp_c":4.0}`, ms/1000, ms%1000, d.seq)
	}
	if n > 1 {
		payload = append(payload, "]}"...)
	}
	topic := "larder/v1/devices/" + d.id + "/readings"
	pid := d.nextPID
	d.nextPID = d.nextPID%65535 + 1
	d.mu.Lock()
	d.unacked[pid] = n
	d.mu.Unlock()
	buf = append(buf[:0], 0x32)
	buf = varint(buf, 2+len(topic)+2+len(payload))
	buf = str(buf, topic)
	buf = binary.BigEndian.AppendUint16(buf, pid)
	buf = append(buf, payload...)
	if _, err := d.conn.Write(buf); err != nil {
		fmt.Fprintf(os.Stderr, "%s: write: %v\n", d.id, err)
		os.Exit(2)
	}
	published.Add(int64(n))
	return buf
}

func report() { fmt.Printf("stats %d %d\n", published.Load(), acked.Load()) }

func run(devs []*device, rate float64, seconds float64, batch int) {
	start := time.Now()
	sent, i := int64(0), 0
	buf := make([]byte, 0, 256)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	lastReport := start
	for now := range tick.C {
		elapsed := now.Sub(start).Seconds()
		if elapsed >= seconds {
			break
		}
		due := int64(rate*elapsed) - sent
		for ; due >= int64(batch); due -= int64(batch) {
			buf = devs[i%len(devs)].publish(now, batch, buf)
			i++
			sent += int64(batch)
		}
		if now.Sub(lastReport) >= 50*time.Millisecond {
			report()
			lastReport = now
		}
	}
	report()
}

func main() {
	addr := "127.0.0.1:1883"
	if len(os.Args) > 1 {
		addr = os.Args[1]
	}
	in := bufio.NewScanner(os.Stdin)
	var devs []*device
	for in.Scan() {
		line := strings.TrimSpace(in.Text())
		if line == "" {
			break
		}
		f := strings.Fields(line)
		devs = append(devs, &device{id: f[0], secret: f[1]})
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(devs))
	sem := make(chan struct{}, 200)
	for _, d := range devs {
		wg.Add(1)
		go func(d *device) {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			if err := d.connect(addr); err != nil {
				errs <- err
			}
		}(d)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("connected %d\n", len(devs))
	for in.Scan() {
		f := strings.Fields(in.Text())
		switch {
		case (len(f) == 3 || len(f) == 4) && f[0] == "rate":
			rate, err1 := strconv.ParseFloat(f[1], 64)
			secs, err2 := strconv.ParseFloat(f[2], 64)
			batch, err3 := 1, error(nil)
			if len(f) == 4 {
				batch, err3 = strconv.Atoi(f[3])
			}
			if err1 != nil || err2 != nil || err3 != nil || batch < 1 {
				fmt.Fprintln(os.Stderr, "usage: rate READINGS_PER_S SECONDS [READINGS_PER_MESSAGE]")
				continue
			}
			run(devs, rate, secs, batch)
			fmt.Println("done")
		case len(f) == 1 && f[0] == "stats":
			report()
		case len(f) == 1 && f[0] == "quit":
			for _, d := range devs {
				d.conn.Write([]byte{0xe0, 0x00}) // DISCONNECT
				d.conn.Close()
			}
			return
		}
	}
}
