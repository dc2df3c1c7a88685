-- Orthanc Lua rule: route every OCT volume series (Modality OPT) to the glaucoma DICOM node.
--
-- Load it with "LuaScripts": ["route-opt.lua"] in orthanc.json. It needs the node registered
-- under DicomModalities with the name below ("MONAI") and Orthanc's "StableAge" (seconds of quiet
-- after which a series counts as stable).
--
-- Why OnStableSeries and not OnStableStudy: the results (SR, SEG, PDF) are stored back into the
-- same study, which makes the study "stable" again; an OnStableStudy rule would then send the OCT
-- volume a second time. A series-level rule only fires for the OPT series itself (the results are
-- new series with Modality SR/SEG/DOC). The node also refuses to process a SOP instance twice.
--
-- The send is an asynchronous Orthanc job: if the node is down the job fails and shows in
-- GET /jobs; resubmit it with POST /jobs/{id}/resubmit once the node is back.

local NODE_MODALITY = 'MONAI'   -- key of the node in DicomModalities

function OnStableSeries(seriesId, tags, metadata)
  if tags['Modality'] == 'OPT' then
    local request = '{"Resources": ["' .. seriesId .. '"], "Synchronous": false}'
    local answer = RestApiPost('/modalities/' .. NODE_MODALITY .. '/store', request)
    print('route-opt: series ' .. seriesId .. ' queued for ' .. NODE_MODALITY .. ': ' .. answer)
  end
end
