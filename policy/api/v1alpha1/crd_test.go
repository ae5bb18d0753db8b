package v1alpha1

import (
	"os"
	"testing"

	"sigs.k8s.io/yaml"
)

// TestCRDDocumentsEveryField reads the generated CRD and requires a
// description on every property: it is what kubectl explain shows users,
// and it comes from the doc comments on the Go fields.
func TestCRDDocumentsEveryField(t *testing.T) {
	data, err := os.ReadFile("../../../manifests/crd/fjord.dev_resiliencepolicies.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var crd struct {
		Spec struct {
			Versions []struct {
				Schema struct {
					OpenAPIV3Schema property `json:"openAPIV3Schema"`
				} `json:"schema"`
			} `json:"versions"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(data, &crd); err != nil {
		t.Fatal(err)
	}
	n := 0
	var walk func(p property, path string)
	walk = func(p property, path string) {
		for name, sub := range p.Properties {
			fp := path + "." + name
			// metadata is ObjectMeta, documented by Kubernetes itself.
			if fp == ".metadata" {
				continue
			}
			n++
			if sub.Description == "" {
				t.Errorf("%s has no description: give the Go field a doc comment and run make manifests", fp)
			}
			walk(sub, fp)
		}
		if p.Items != nil {
			walk(*p.Items, path+"[]")
		}
	}
	for _, v := range crd.Spec.Versions {
		walk(v.Schema.OpenAPIV3Schema, "")
	}
	if n < 50 {
		t.Fatalf("found only %d properties; is the CRD complete?", n)
	}
}

type property struct {
	Description string              `json:"description"`
	Properties  map[string]property `json:"properties"`
	Items       *property           `json:"items"`
}
