package backup

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/url"
	"os"
	"slices"
	"strings"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// S3Config is an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, …) and
// the prefix under it that is the repository's root.
type S3Config struct {
	// Endpoint is host[:port], or a URL whose scheme (http or https) then
	// decides Secure.
	Endpoint string
	Bucket   string
	// Prefix is prepended to every object's name, with a slash between:
	// several repositories can share a bucket. Object names (and so the
	// associated data of sealed objects) do not include it, so a
	// repository can be moved to another prefix or bucket whole.
	Prefix string
	// Region is the bucket's region ("" lets the client find it; new
	// buckets are made in us-east-1).
	Region string
	// AccessKey and SecretKey, each taken from AWS_ACCESS_KEY_ID and
	// AWS_SECRET_ACCESS_KEY when empty (with AWS_SESSION_TOKEN when both
	// come from there).
	AccessKey string
	SecretKey string
	// Secure selects https.
	Secure bool
}

// s3PartSize is the part size of multipart uploads. A Put holds one part
// in memory while it uploads it (and nothing more of the object), and an
// upload has at most 10,000 parts: 64 MiB parts bound an object to 640
// GiB.
const s3PartSize = 64 << 20

// S3 is a repository in an S3-compatible bucket. Each object is an S3
// object, Prefix/name.
//
// A Put streams its reader as a multipart upload, which S3 makes visible
// only when it completes; a failed Put aborts it, so no part of an object
// is ever seen under its name.
type S3 struct {
	client *minio.Client
	core   minio.Core // for GetObject: one plain GET, errors up front
	bucket string
	prefix string // "" or ending in "/"
	desc   string // what String returns
}

var _ Repository = (*S3)(nil)

// NewS3 connects to the bucket cfg names, creating it when it does not
// exist.
func NewS3(ctx context.Context, cfg S3Config) (*S3, error) {
	endpoint, secure := cfg.Endpoint, cfg.Secure
	if strings.Contains(endpoint, "://") {
		u, err := url.Parse(endpoint)
		if err != nil {
			return nil, fmt.Errorf("backup: s3 endpoint %q: %w", endpoint, err)
		}
		switch {
		case u.Scheme == "https":
			secure = true
		case u.Scheme == "http" && !cfg.Secure:
		case u.Scheme == "http":
			return nil, fmt.Errorf("backup: s3 endpoint %q: http, but secure is set", endpoint)
		default:
			return nil, fmt.Errorf("backup: s3 endpoint %q: scheme %q: want http or https", endpoint, u.Scheme)
		}
		if u.Path != "" && u.Path != "/" {
			return nil, fmt.Errorf("backup: s3 endpoint %q: no path allowed (put it in prefix)", endpoint)
		}
		endpoint = u.Host
	}
	if endpoint == "" || cfg.Bucket == "" {
		return nil, errors.New("backup: s3 repository: endpoint and bucket are required")
	}
	prefix := strings.Trim(cfg.Prefix, "/")
	if prefix != "" {
		if err := checkName(prefix); err != nil {
			return nil, fmt.Errorf("backup: s3 prefix: %w", err)
		}
		prefix += "/"
	}
	creds, err := s3Credentials(cfg)
	if err != nil {
		return nil, err
	}
	scheme := "http"
	if secure {
		scheme = "https"
	}
	s := &S3{bucket: cfg.Bucket, prefix: prefix, desc: fmt.Sprintf("s3 %s://%s/%s/%s", scheme, endpoint, cfg.Bucket, prefix)}
	s.client, err = minio.New(endpoint, &minio.Options{Creds: creds, Secure: secure, Region: cfg.Region})
	if err != nil {
		return nil, fmt.Errorf("backup: %s: %w", s, err)
	}
	s.core = minio.Core{Client: s.client}
	exists, err := s.client.BucketExists(ctx, cfg.Bucket)
	if err != nil {
		return nil, fmt.Errorf("backup: %s: %w", s, err)
	}
	if !exists {
		err := s.client.MakeBucket(ctx, cfg.Bucket, minio.MakeBucketOptions{Region: cfg.Region})
		if err != nil && minio.ToErrorResponse(err).Code != minio.BucketAlreadyOwnedByYou {
			return nil, fmt.Errorf("backup: %s: creating the bucket: %w", s, err)
		}
	}
	return s, nil
}

// s3Credentials takes the keys from cfg, or else from the environment.
func s3Credentials(cfg S3Config) (*credentials.Credentials, error) {
	access, secret, token := cfg.AccessKey, cfg.SecretKey, ""
	if access == "" {
		access = os.Getenv("AWS_ACCESS_KEY_ID")
	}
	if secret == "" {
		secret = os.Getenv("AWS_SECRET_ACCESS_KEY")
	}
	if cfg.AccessKey == "" && cfg.SecretKey == "" {
		token = os.Getenv("AWS_SESSION_TOKEN")
	}
	switch {
	case access == "" && secret == "":
		return nil, errors.New("backup: s3 repository: no credentials: set the access and secret keys, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
	case access == "":
		return nil, errors.New("backup: s3 repository: no access key: set it, or AWS_ACCESS_KEY_ID")
	case secret == "":
		return nil, errors.New("backup: s3 repository: no secret key: set it, or AWS_SECRET_ACCESS_KEY")
	}
	return credentials.NewStaticV4(access, secret, token), nil
}

// String names the endpoint, bucket and prefix; never the keys.
func (s *S3) String() string { return s.desc }

func (s *S3) key(name string) string { return s.prefix + name }

// Put implements Repository.
func (s *S3) Put(ctx context.Context, name string, r io.Reader) (int64, string, error) {
	if err := checkName(name); err != nil {
		return 0, "", err
	}
	hr := &hashingReader{r: r, h: sha256.New()}
	_, err := s.client.PutObject(ctx, s.bucket, s.key(name), hr, -1, minio.PutObjectOptions{
		ContentType: "application/octet-stream",
		PartSize:    s3PartSize,
	})
	if err != nil {
		return 0, "", fmt.Errorf("backup: %s: put %s: %w", s, name, err)
	}
	return hr.n, hex.EncodeToString(hr.h.Sum(nil)), nil
}

// Get implements Repository.
func (s *S3) Get(ctx context.Context, name string) (io.ReadCloser, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	body, _, _, err := s.core.GetObject(ctx, s.bucket, s.key(name), minio.GetObjectOptions{})
	if err != nil {
		if minio.ToErrorResponse(err).Code == minio.NoSuchKey {
			return nil, fmt.Errorf("backup: %s: %s: %w", s, name, ErrNotFound)
		}
		return nil, fmt.Errorf("backup: %s: get %s: %w", s, name, err)
	}
	return body, nil
}

// List implements Repository.
func (s *S3) List(ctx context.Context, prefix string) ([]Object, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the listing goroutine when we return early
	objs := []Object{}
	for info := range s.client.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: s.key(prefix), Recursive: true}) {
		if info.Err != nil {
			return nil, fmt.Errorf("backup: %s: list %q: %w", s, prefix, info.Err)
		}
		name := strings.TrimPrefix(info.Key, s.prefix)
		if checkName(name) != nil {
			continue // not written through a Repository ("a//b", "dir/")
		}
		objs = append(objs, Object{Name: name, Size: info.Size, Modified: info.LastModified})
	}
	// S3 lists in UTF-8 binary order already; this keeps the promise for
	// the stores that do not.
	slices.SortFunc(objs, func(a, b Object) int { return strings.Compare(a.Name, b.Name) })
	return objs, nil
}

// Delete implements Repository; S3 reports no error for a missing object.
func (s *S3) Delete(ctx context.Context, name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	if err := s.client.RemoveObject(ctx, s.bucket, s.key(name), minio.RemoveObjectOptions{}); err != nil {
		if minio.ToErrorResponse(err).Code == minio.NoSuchKey {
			return nil
		}
		return fmt.Errorf("backup: %s: delete %s: %w", s, name, err)
	}
	return nil
}

// hashingReader counts and hashes what the upload reads.
type hashingReader struct {
	r io.Reader
	h hash.Hash
	n int64
}

func (hr *hashingReader) Read(p []byte) (int, error) {
	n, err := hr.r.Read(p)
	hr.h.Write(p[:n])
	hr.n += int64(n)
	return n, err
}
