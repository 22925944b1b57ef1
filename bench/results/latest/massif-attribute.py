import re,sys,collections
lines=open('massif.out').read().split('\n')
# find peak snapshot
snaps=[];cur=None
for i,l in enumerate(lines):
    if l.startswith('snapshot='): cur={'i':i}; snaps.append(cur)
    elif cur is not None and l.startswith('mem_heap_B='): cur['heap']=int(l.split('=')[1])
    elif cur is not None and l.startswith('mem_heap_extra_B='): cur['extra']=int(l.split('=')[1])
    elif cur is not None and l.startswith('heap_tree='): cur['tree']=l.split('=')[1]; cur['ti']=i+1
peak=[s for s in snaps if s.get('tree')=='peak'][0]
print('peak heap',peak['heap'],'extra',peak['extra'], 'per conn', (peak['heap']+peak['extra'])/2000)
base=[s for s in snaps if s.get('tree') in('detailed','peak')][0]
# parse tree
def parse(start):
    nodes=[];i=start
    stack=[]
    while i<len(lines):
        l=lines[i]
        m=re.match(r'^( *)n(\d+): (\d+) (.*)$',l)
        if not m: break
        depth=len(m.group(1)); node={'bytes':int(m.group(3)),'desc':m.group(4),'kids':[],'depth':depth}
        while stack and stack[-1]['depth']>=depth: stack.pop()
        if stack: stack[-1]['kids'].append(node)
        else: nodes.append(node)
        stack.append(node); i+=1
    return nodes[0]
root=parse(peak['ti'])
KEY=re.compile(r'(tidings|tungstenite|axum|hyper|hashbrown|jsonwebtoken|governor|tokio|dashmap|serde_json)::[A-Za-z_:<>{}]*')
# attribute each leaf path: collect path frames, pick the most meaningful 2 frames
res=collections.Counter()
def fn(d):
    m=re.search(r': (.*?) \(',d)
    return m.group(1) if m else d[:80]
def walk(n,path):
    path=path+[fn(n['desc'])]
    if not n['kids'] or all(k['bytes']==0 for k in n['kids']):
        # choose first frame in tidings or interesting lib, skipping alloc plumbing
        p=[f for f in path[1:] if not re.search(r'alloc|__rdl|__rust|RawVec|raw_vec|Box<|malloc|realloc|grow|reserve|with_capacity|new_uninit|exchange_malloc|::new_in|try_allocate|allocate_in|core::ptr',f)]
        key=' <- '.join(p[:3])
        res[key]+=n['bytes']; return
    acc=0
    for k in n['kids']:
        walk(k,path); acc+=k['bytes']
    if n['bytes']-acc>0: res[' <- '.join(path[1:4])+' [rest]']+=n['bytes']-acc
walk(root,[])
for k,v in res.most_common(25): print(f"{v/2000:8.0f} B/conn  {k[:230]}")
print('----')
res2=collections.Counter()
def walk2(n,path):
    path=path+[fn(n['desc'])]
    if not n['kids'] or all(k['bytes']==0 for k in n['kids']):
        p=[f for f in path[1:] if 'UnknownInlinedFun' not in f and not re.search(r'__rdl|__rust|aligned_malloc|^alloc$|exchange_malloc|allocate_in|try_allocate|RawVec|raw_vec|do_alloc|grow_amortized|finish_grow|in \d+ place',f)]
        res2[' <- '.join(p[:6])]+=n['bytes']; return
    for k in n['kids']: walk2(k,path)
walk2(root,[])
for k,v in res2.most_common(14): print(f"{v/2000:8.0f} B/conn  {k[:420]}")
print('====')
res3=collections.Counter()
def walk3(n,path):
    path=path+[fn(n['desc'])]
    if not n['kids'] or all(k['bytes']==0 for k in n['kids']):
        p=[f for f in path[1:] if re.search(r'tidings|tungstenite|axum::|hyper::|governor|jsonwebtoken',f) ]
        res3[' <- '.join(x[:110] for x in p[:3])]+=n['bytes']; return
    for k in n['kids']: walk3(k,path)
walk3(root,[])
for k,v in res3.most_common(22): print(f"{v/2000:8.0f} B/conn  {k}")
