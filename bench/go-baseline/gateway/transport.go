package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/golang/protobuf/proto"
	"github.com/gorilla/websocket"

	clientpb "gobaseline/pb/switchyard_client_v1"
)

// Socket buffer sizes of the userspace writers and readers.
const (
	tcpReadBuffer  = 4096
	tcpWriteBuffer = 16 << 10
	wsFlushBuffer  = 16 << 10
)

var (
	// errTooLarge: a frame (or TCP length prefix) over the limit; the session ends.
	errTooLarge = errors.New("frame exceeds the size limit")
	// errUnsupported: a WebSocket text message; answered with BAD_REQUEST.
	errUnsupported = errors.New("unsupported frame")
)

// transport reads and writes whole frames. readFrame and setReadDeadline are used by the
// reader goroutine only; writeEnvelope, flush and setWriteDeadline by the writer only.
type transport interface {
	readFrame() ([]byte, error)
	writeEnvelope(env *clientpb.Envelope) error
	flush() error
	setReadDeadline(t time.Time) error
	setWriteDeadline(t time.Time) error
	close()
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// ---- TCP: 4-byte big-endian length, then the encoded envelope ----

type tcpTransport struct {
	conn      net.Conn
	r         *bufio.Reader
	w         *bufio.Writer
	max       int
	rhead     [4]byte // the reader's length prefix
	whead     [4]byte // the writer's
	enc       *proto.Buffer
	closeOnce sync.Once
}

func (g *gateway) serveTCP(ln net.Listener) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Temporary() {
				log.Printf("tcp accept: %v", err)
				time.Sleep(50 * time.Millisecond)
				continue
			}
			log.Fatalf("tcp accept: %v", err)
		}
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.SetNoDelay(true)
		}
		go g.serve(&tcpTransport{
			conn: conn,
			r:    bufio.NewReaderSize(conn, tcpReadBuffer),
			w:    bufio.NewWriterSize(conn, tcpWriteBuffer),
			max:  g.cfg.maxFrame,
			enc:  proto.NewBuffer(make([]byte, 0, 512)),
		})
	}
}

func (t *tcpTransport) readFrame() ([]byte, error) {
	if _, err := io.ReadFull(t.r, t.rhead[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(t.rhead[:])
	if uint64(n) > uint64(t.max) {
		return nil, errTooLarge
	}
	// Small frames in one allocation; large ones grow only as their bytes arrive, so a length
	// prefix alone never makes the gateway allocate.
	if n <= 64<<10 {
		frame := make([]byte, n)
		if _, err := io.ReadFull(t.r, frame); err != nil {
			return nil, err
		}
		return frame, nil
	}
	var buf bytes.Buffer
	if _, err := io.CopyN(&buf, t.r, int64(n)); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func (t *tcpTransport) writeEnvelope(env *clientpb.Envelope) error {
	t.enc.Reset()
	if err := t.enc.Marshal(env); err != nil {
		return err
	}
	frame := t.enc.Bytes()
	binary.BigEndian.PutUint32(t.whead[:], uint32(len(frame)))
	if _, err := t.w.Write(t.whead[:]); err != nil {
		return err
	}
	_, err := t.w.Write(frame)
	return err
}

func (t *tcpTransport) flush() error                       { return t.w.Flush() }
func (t *tcpTransport) setReadDeadline(d time.Time) error  { return t.conn.SetReadDeadline(d) }
func (t *tcpTransport) setWriteDeadline(d time.Time) error { return t.conn.SetWriteDeadline(d) }
func (t *tcpTransport) close()                             { t.closeOnce.Do(func() { t.conn.Close() }) }

// ---- WebSocket: one binary message per envelope, on /ws ----

var upgrader = websocket.Upgrader{
	ReadBufferSize:  4096,
	WriteBufferSize: 4096,
	CheckOrigin:     func(*http.Request) bool { return true },
}

// bufferedConn puts a bufio.Writer between gorilla/websocket and the socket. gorilla writes
// every message to the connection as soon as it is complete; with this, the session writer
// decides when the bytes leave (flush when its queue is empty), as on TCP.
type bufferedConn struct {
	net.Conn
	mu sync.Mutex // gorilla writes control frames from the reader goroutine too
	w  *bufio.Writer
}

func (c *bufferedConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.w.Write(p)
}

func (c *bufferedConn) Flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.w.Flush()
}

// hijacker hands gorilla the buffered connection instead of the raw one.
type hijacker struct {
	http.ResponseWriter
	conn *bufferedConn
}

func (h *hijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	raw, rw, err := h.ResponseWriter.(http.Hijacker).Hijack()
	if err != nil {
		return nil, nil, err
	}
	if tc, ok := raw.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	h.conn = &bufferedConn{Conn: raw, w: bufio.NewWriterSize(raw, wsFlushBuffer)}
	return h.conn, rw, nil
}

type wsTransport struct {
	ws        *websocket.Conn
	conn      *bufferedConn
	max       int
	enc       *proto.Buffer
	closeOnce sync.Once
}

func (g *gateway) serveWS(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/ws" {
		http.NotFound(w, r)
		return
	}
	h := &hijacker{ResponseWriter: w}
	ws, err := upgrader.Upgrade(h, r, nil)
	if err != nil {
		return // gorilla has answered with an HTTP error
	}
	if err := h.conn.Flush(); err != nil { // the 101 response
		ws.Close()
		return
	}
	t := &wsTransport{ws: ws, conn: h.conn, max: g.cfg.maxFrame, enc: proto.NewBuffer(make([]byte, 0, 512))}
	// Pongs are written by the reader goroutine: flush them at once.
	ws.SetPingHandler(func(data string) error {
		err := ws.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
		if err == nil {
			err = h.conn.Flush()
		}
		if err == websocket.ErrCloseSent {
			return nil
		}
		return err
	})
	g.serve(t)
}

func (t *wsTransport) readFrame() ([]byte, error) {
	kind, r, err := t.ws.NextReader()
	if err != nil {
		return nil, err
	}
	if kind != websocket.BinaryMessage {
		return nil, errUnsupported // the rest of the message is skipped by the next read
	}
	// Read at most max+1 bytes of the message: more means too large.
	frame, err := io.ReadAll(io.LimitReader(r, int64(t.max)+1))
	if err != nil {
		return nil, err
	}
	if len(frame) > t.max {
		return nil, errTooLarge
	}
	return frame, nil
}

func (t *wsTransport) writeEnvelope(env *clientpb.Envelope) error {
	t.enc.Reset()
	if err := t.enc.Marshal(env); err != nil {
		return err
	}
	return t.ws.WriteMessage(websocket.BinaryMessage, t.enc.Bytes())
}

func (t *wsTransport) flush() error                       { return t.conn.Flush() }
func (t *wsTransport) setReadDeadline(d time.Time) error  { return t.ws.SetReadDeadline(d) }
func (t *wsTransport) setWriteDeadline(d time.Time) error { return t.ws.SetWriteDeadline(d) }
func (t *wsTransport) close()                             { t.closeOnce.Do(func() { t.conn.Conn.Close() }) }
