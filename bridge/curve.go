package bridge

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strings"
	"time"
)

// Curve holds the keys that make the bridge a CurveZMQ client: the worker's
// (server's) public key and the bridge's own key pair, all in Z85 (40
// characters).
type Curve struct {
	ServerKey, PublicKey, SecretKey string
}

// LoadCurve reads the worker's public certificate (a zcert ".key" file, as
// czmq's zcert and pyzmq's zmq.auth.create_certificates write) and the
// bridge's secret certificate (".key_secret", holding both its keys).
func LoadCurve(serverCert, clientSecretCert string) (*Curve, error) {
	server, _, err := readCert(serverCert)
	if err != nil {
		return nil, err
	}
	pub, sec, err := readCert(clientSecretCert)
	if err != nil {
		return nil, err
	}
	if sec == "" {
		return nil, fmt.Errorf("%w: %w", ErrConfig, fmt.Errorf("%s holds no secret-key: give the bridge's .key_secret certificate", clientSecretCert))
	}
	return &Curve{ServerKey: server, PublicKey: pub, SecretKey: sec}, nil
}

// readCert returns the public and (if present) secret key of a zcert file.
func readCert(path string) (public, secret string, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", "", fmt.Errorf("%w: %v", ErrConfig, fmt.Errorf("CURVE certificate: %v", err))
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		name, value, ok := strings.Cut(line, "=")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		name, value = strings.TrimSpace(name), strings.Trim(strings.TrimSpace(value), `"`)
		if name != "public-key" && name != "secret-key" {
			continue
		}
		if len(value) != 40 {
			return "", "", fmt.Errorf("%w: %w", ErrConfig, fmt.Errorf("%s:%d: %s must be 40 Z85 characters", path, n, name))
		}
		if name == "public-key" {
			public = value
		} else {
			secret = value
		}
	}
	if public == "" {
		return "", "", fmt.Errorf("%w: %w", ErrConfig, fmt.Errorf("%s is not a CURVE certificate (no public-key)", path))
	}
	return public, secret, nil
}

// WriteCertificates writes a new key pair as base.key (public) and
// base.key_secret (mode 0600) in the zcert format.
func WriteCertificates(base string, public, secret string) error {
	now := time.Now().Format("2006-01-02 15:04:05")
	head := "#   ****  Generated on " + now + " by zmq-gateway  ****\n"
	pub := head + "#   ZeroMQ CURVE Public Certificate\n#   Exchange securely, or use a secure mechanism to verify the contents\n" +
		"#   of this file after exchange.\n\nmetadata\ncurve\n    public-key = \"" + public + "\"\n"
	sec := head + "#   ZeroMQ CURVE **Secret** Certificate\n#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.\n\n" +
		"metadata\ncurve\n    public-key = \"" + public + "\"\n    secret-key = \"" + secret + "\"\n"
	if err := os.WriteFile(base+".key", []byte(pub), 0o644); err != nil {
		return err
	}
	return os.WriteFile(base+".key_secret", []byte(sec), 0o600)
}
