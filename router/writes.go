package router

import (
	"slices"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// appendWrites adds to dst the tables statement n writes, once each,
// looking into data-modifying CTEs and EXPLAIN ANALYZE as well.
func appendWrites(dst []string, n *pg.Node) []string {
	add := func(r *pg.RangeVar) {
		if r == nil || r.GetRelname() == "" {
			return
		}
		name := r.GetRelname()
		if r.GetSchemaname() != "" {
			name = r.GetSchemaname() + "." + name
		}
		if !slices.Contains(dst, name) {
			dst = append(dst, name)
		}
	}
	walk(n.ProtoReflect(), func(m protoreflect.Message) {
		switch st := m.Interface().(type) {
		case *pg.InsertStmt:
			add(st.GetRelation())
		case *pg.UpdateStmt:
			add(st.GetRelation())
		case *pg.DeleteStmt:
			add(st.GetRelation())
		case *pg.MergeStmt:
			add(st.GetRelation())
		case *pg.CopyStmt:
			if st.GetIsFrom() {
				add(st.GetRelation())
			}
		case *pg.TruncateStmt:
			for _, r := range st.GetRelations() {
				add(r.GetRangeVar())
			}
		}
	})
	return dst
}

// appendTables adds to dst every relation n names, once each.
func appendTables(dst []string, n *pg.Node) []string {
	walk(n.ProtoReflect(), func(m protoreflect.Message) {
		r, ok := m.Interface().(*pg.RangeVar)
		if !ok || r.GetRelname() == "" {
			return
		}
		name := r.GetRelname()
		if r.GetSchemaname() != "" {
			name = r.GetSchemaname() + "." + name
		}
		if !slices.Contains(dst, name) {
			dst = append(dst, name)
		}
	})
	return dst
}

// isolationOf returns the isolation level a transaction statement sets.
func isolationOf(n *pg.Node) string {
	var opts []*pg.Node
	switch {
	case n.GetTransactionStmt() != nil:
		opts = n.GetTransactionStmt().GetOptions()
	case n.GetVariableSetStmt() != nil && n.GetVariableSetStmt().GetKind() == pg.VariableSetKind_VAR_SET_MULTI &&
		strings.EqualFold(n.GetVariableSetStmt().GetName(), "TRANSACTION"):
		opts = n.GetVariableSetStmt().GetArgs()
	}
	for _, o := range opts {
		d := o.GetDefElem()
		if d == nil || d.GetDefname() != "transaction_isolation" {
			continue
		}
		if c := d.GetArg().GetAConst(); c != nil && c.GetSval() != nil {
			return strings.ToLower(c.GetSval().GetSval())
		}
	}
	return ""
}
