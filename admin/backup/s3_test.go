package backup_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	miniogo "github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/pgshield/pgshield/admin/backup"
	"github.com/pgshield/pgshield/internal/minio"
)

// startMinIO starts a real MinIO server on loopback for the test (built
// into bin/minio on first use).
func startMinIO(t *testing.T) *minio.Server { return minio.Start(t) }

// s3Config is the configuration of bucket on srv. The conversion compiles
// only while minio.Config mirrors backup.S3Config.
func s3Config(srv *minio.Server, bucket string) backup.S3Config {
	return backup.S3Config(srv.Config(bucket))
}

func newBucketName() string { return fmt.Sprintf("pgshield-%08x", rand.Uint32()) }

// newS3Bucket makes repositories in new buckets of srv, which NewS3
// creates.
func newS3Bucket(srv *minio.Server) func(t *testing.T) backup.Repository {
	return func(t *testing.T) backup.Repository {
		repo, err := backup.NewS3(t.Context(), s3Config(srv, newBucketName()))
		if err != nil {
			t.Fatal(err)
		}
		return repo
	}
}

// rawClient is a plain S3 client of srv, to look behind the repository.
func rawClient(t *testing.T, srv *minio.Server) *miniogo.Client {
	t.Helper()
	c, err := miniogo.New(srv.Endpoint, &miniogo.Options{Creds: credentials.NewStaticV4(srv.AccessKey, srv.SecretKey, "")})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestS3(t *testing.T) {
	srv := startMinIO(t)

	t.Run("CreatesBucketAndReopens", func(t *testing.T) {
		bucket := newBucketName()
		c := rawClient(t, srv)
		if ok, err := c.BucketExists(t.Context(), bucket); err != nil || ok {
			t.Fatalf("bucket exists before: %v, %v", ok, err)
		}
		r1, err := backup.NewS3(t.Context(), s3Config(srv, bucket))
		if err != nil {
			t.Fatal(err)
		}
		if ok, err := c.BucketExists(t.Context(), bucket); err != nil || !ok {
			t.Fatalf("bucket exists after NewS3: %v, %v", ok, err)
		}
		put(t, r1, "x", []byte("1"))
		r2, err := backup.NewS3(t.Context(), s3Config(srv, bucket))
		if err != nil {
			t.Fatalf("NewS3 of an existing bucket: %v", err)
		}
		if got := get(t, r2, "x"); string(got) != "1" {
			t.Fatalf("Get = %q", got)
		}
	})

	t.Run("Prefix", func(t *testing.T) {
		bucket := newBucketName()
		open := func(prefix string) backup.Repository {
			cfg := s3Config(srv, bucket)
			cfg.Prefix = prefix
			repo, err := backup.NewS3(t.Context(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			return repo
		}
		one, two, root := open("clusters/one"), open("/clusters/two/"), open("")
		put(t, one, "backups/1/manifest.json", []byte("one"))
		put(t, two, "backups/1/manifest.json", []byte("two"))
		if got := get(t, one, "backups/1/manifest.json"); string(got) != "one" {
			t.Fatalf("one: %q", got)
		}
		if got := names(list(t, two, "")); !slices.Equal(got, []string{"backups/1/manifest.json"}) {
			t.Fatalf("two lists %q", got)
		}
		if got := names(list(t, root, "")); !slices.Equal(got, []string{"clusters/one/backups/1/manifest.json", "clusters/two/backups/1/manifest.json"}) {
			t.Fatalf("the bucket's root lists %q", got)
		}
		if err := one.Delete(t.Context(), "backups/1/manifest.json"); err != nil {
			t.Fatal(err)
		}
		if got := get(t, two, "backups/1/manifest.json"); string(got) != "two" {
			t.Fatalf("two after one's Delete: %q", got)
		}
		// Keys that no Repository writes (a folder marker) are not listed.
		if _, err := rawClient(t, srv).PutObject(t.Context(), bucket, "clusters/one/folder/", strings.NewReader(""), 0, miniogo.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
		if got := list(t, one, ""); len(got) != 0 {
			t.Fatalf("one lists %+v", got)
		}
	})

	// A failed Put aborts its multipart upload: no parts are left behind
	// in the bucket (and none is visible as the object).
	t.Run("FailedPutAborts", func(t *testing.T) {
		bucket := newBucketName()
		repo, err := backup.NewS3(t.Context(), s3Config(srv, bucket))
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = repo.Put(t.Context(), "backups/1/base.tar.zst.enc", &failingReader{r: pseudoRandom(8, 1<<30), n: 70 << 20, err: errDisk})
		if !errors.Is(err, errDisk) {
			t.Fatalf("err = %v", err)
		}
		wantNotFound(t, repo, "backups/1/base.tar.zst.enc")
		var uploads []string
		for u := range rawClient(t, srv).ListIncompleteUploads(t.Context(), bucket, "", true) {
			if u.Err != nil {
				t.Fatal(u.Err)
			}
			uploads = append(uploads, u.Key)
		}
		if len(uploads) != 0 {
			t.Fatalf("incomplete uploads left: %q", uploads)
		}
	})

	t.Run("String", func(t *testing.T) {
		cfg := s3Config(srv, newBucketName())
		cfg.Prefix = "pg/prod"
		repo, err := backup.NewS3(t.Context(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		s := repo.String()
		for _, want := range []string{srv.Endpoint, cfg.Bucket, "pg/prod"} {
			if !strings.Contains(s, want) {
				t.Errorf("String = %q, want %q in it", s, want)
			}
		}
		if strings.Contains(s, srv.AccessKey) || strings.Contains(s, srv.SecretKey) {
			t.Errorf("String = %q shows a key", s)
		}
		// Nor do errors.
		_, err = repo.Get(t.Context(), "missing")
		if err == nil || strings.Contains(err.Error(), srv.SecretKey) {
			t.Errorf("Get: %v", err)
		}
	})

	t.Run("EndpointURL", func(t *testing.T) {
		cfg := s3Config(srv, newBucketName())
		cfg.Endpoint = "http://" + srv.Endpoint
		repo, err := backup.NewS3(t.Context(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		put(t, repo, "x", []byte("1"))
		for _, bad := range []string{"ftp://" + srv.Endpoint, "http://" + srv.Endpoint + "/path", ""} {
			cfg.Endpoint = bad
			if _, err := backup.NewS3(t.Context(), cfg); err == nil {
				t.Errorf("NewS3 with endpoint %q succeeded", bad)
			}
		}
		cfg = s3Config(srv, "")
		if _, err := backup.NewS3(t.Context(), cfg); err == nil {
			t.Error("NewS3 without a bucket succeeded")
		}
	})

	t.Run("WrongCredentials", func(t *testing.T) {
		cfg := s3Config(srv, newBucketName())
		cfg.SecretKey = "not-the-secret"
		if _, err := backup.NewS3(t.Context(), cfg); err == nil || strings.Contains(err.Error(), "not-the-secret") {
			t.Fatalf("NewS3 with a wrong secret: %v", err)
		}
	})
}

// The keys may come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY
// (t.Setenv: not parallel).
func TestS3CredentialsFromEnvironment(t *testing.T) {
	srv := startMinIO(t)
	cfg := s3Config(srv, newBucketName())
	cfg.AccessKey, cfg.SecretKey = "", ""

	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	t.Setenv("AWS_SESSION_TOKEN", "")
	_, err := backup.NewS3(t.Context(), cfg)
	if err == nil || !strings.Contains(err.Error(), "AWS_ACCESS_KEY_ID") || !strings.Contains(err.Error(), "AWS_SECRET_ACCESS_KEY") {
		t.Fatalf("no credentials: err = %v, want the variables named", err)
	}

	t.Setenv("AWS_ACCESS_KEY_ID", srv.AccessKey)
	_, err = backup.NewS3(t.Context(), cfg)
	if err == nil || !strings.Contains(err.Error(), "AWS_SECRET_ACCESS_KEY") {
		t.Fatalf("no secret: err = %v, want AWS_SECRET_ACCESS_KEY named", err)
	}

	t.Setenv("AWS_SECRET_ACCESS_KEY", srv.SecretKey)
	repo, err := backup.NewS3(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	put(t, repo, "from/env", []byte("ok"))

	// A key in the configuration wins over the environment's.
	cfg.SecretKey = "wrong"
	if _, err := backup.NewS3(t.Context(), cfg); err == nil {
		t.Fatal("the configuration's (wrong) secret was ignored")
	}
}

// What MinIO stores of a sealed object is, read with the bucket's own
// credentials but without the backup key, neither zstd nor tar.
func TestS3StoredObjectsAreOpaque(t *testing.T) {
	srv := startMinIO(t)
	bucket := newBucketName()
	repo, err := backup.NewS3(t.Context(), s3Config(srv, bucket))
	if err != nil {
		t.Fatal(err)
	}
	k := randomKey(t)
	plain := sampleTar(t)
	put(t, repo, sealName, seal(t, k, sealName, plain))
	obj, err := rawClient(t, srv).GetObject(t.Context(), bucket, sealName, miniogo.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer obj.Close()
	stored, err := io.ReadAll(obj)
	if err != nil {
		t.Fatal(err)
	}
	checkOpaque(t, stored)
	if got, err := open(k, sealName, bytes.NewReader(stored)); err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("open: %d bytes, %v", len(got), err)
	}
}
