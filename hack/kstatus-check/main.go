// Command kstatus-check prints what the kstatus library (sigs.k8s.io/cli-utils), which Flux's
// kustomize-controller and helm-controller use for `wait: true` and healthChecks, makes of
// Kubernetes objects: one line per object, "STATUS<TAB>MESSAGE", or a JSON object with -json.
//
// Usage: kstatus-check [-json] [FILE...]   (no FILE or "-": stdin; JSON or YAML, several
// objects per input allowed; a List is read item by item)
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	k8sjson "k8s.io/apimachinery/pkg/util/json"
	"k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type verdict struct {
	Kind    string `json:"kind"`
	Name    string `json:"name"`
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	asJSON := flag.Bool("json", false, "print one JSON object per line")
	flag.Parse()
	inputs := flag.Args()
	if len(inputs) == 0 {
		inputs = []string{"-"}
	}
	failed := false
	for _, path := range inputs {
		if err := check(path, *asJSON); err != nil {
			fmt.Fprintf(os.Stderr, "kstatus-check: %s: %v\n", path, err)
			failed = true
		}
	}
	if failed {
		os.Exit(1)
	}
}

func check(path string, asJSON bool) error {
	var in io.Reader = os.Stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		in = f
	}
	dec := yaml.NewYAMLOrJSONDecoder(in, 4096)
	for {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		// Numbers as int64 where they are integers, as the API machinery reads them.
		var obj map[string]interface{}
		if err := k8sjson.Unmarshal(raw, &obj); err != nil {
			return err
		}
		if obj == nil {
			continue
		}
		u := &unstructured.Unstructured{Object: obj}
		items := []unstructured.Unstructured{*u}
		if u.IsList() {
			list, err := u.ToList()
			if err != nil {
				return err
			}
			items = list.Items
		}
		for i := range items {
			if err := report(&items[i], asJSON); err != nil {
				return err
			}
		}
	}
}

func report(u *unstructured.Unstructured, asJSON bool) error {
	res, err := status.Compute(u)
	if err != nil {
		return fmt.Errorf("%s %s: %w", u.GetKind(), u.GetName(), err)
	}
	v := verdict{Kind: u.GetKind(), Name: u.GetName(), Status: res.Status.String(), Message: res.Message}
	if asJSON {
		line, err := json.Marshal(v)
		if err != nil {
			return err
		}
		fmt.Println(string(line))
		return nil
	}
	fmt.Printf("%s\t%s\n", v.Status, v.Message)
	return nil
}
